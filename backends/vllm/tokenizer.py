"""vLLM's Hugging Face tokenizer as the prompt front end's Tokenizer (backends/prompt.py)."""

from __future__ import annotations

from lokal.backends.fim import find_fim_format
from lokal.backends.vllm.engine import Engine


class HfTokenizer:
    """The engine's tokenizer, with its vocabulary size as vLLM's model config states it and
    the FIM tokens found by their text (the families of backends/fim.py)."""

    def __init__(self, engine: Engine) -> None:
        self._tokenizer = engine.tokenizer
        self.vocab_size = engine.vocab_size
        self.bos_text = engine.bos_token
        self.eos_text = engine.eos_token
        vocab = engine.tokenizer.get_vocab()
        fmt = find_fim_format(vocab)
        self.fim_ids: tuple[int, int, int] | None = None if fmt is None else (
            vocab[fmt.prefix], vocab[fmt.suffix], vocab[fmt.middle])

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special)

    def special_prefix(self) -> list[int]:
        return self._tokenizer.encode("", add_special_tokens=True)
