"""llama.cpp's vocabulary as the prompt front end's Tokenizer (backends/prompt.py)."""

from __future__ import annotations

from typing import Any

import llama_cpp


class LlamaTokenizer:
    """A loaded LlamaModel's tokenizer: its BOS as the model's GGUF says to add it, and the
    FIM tokens from the GGUF's fim_pre / fim_suf / fim_mid ids."""

    def __init__(self, model: Any) -> None:
        self._model = model
        vocab = model.vocab
        self.vocab_size: int = model.n_vocab()
        self.bos_text = self._text(model.token_bos())
        self.eos_text = self._text(model.token_eos())
        fim = (llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
               llama_cpp.llama_vocab_fim_mid(vocab))
        self.fim_ids: tuple[int, int, int] | None = fim if min(fim) >= 0 else None
        bos = model.token_bos()
        self._prefix = [bos] if llama_cpp.llama_vocab_get_add_bos(vocab) and bos >= 0 else []

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_special, True))

    def special_prefix(self) -> list[int]:
        return list(self._prefix)

    def _text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._model.detokenize([token], special=True)).decode("utf-8", "replace")
