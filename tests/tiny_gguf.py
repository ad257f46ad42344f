"""A tiny random-weight llama GGUF written with the `gguf` package, whose vocabulary the tests
know token by token (FIM tokens included), so they can check the exact ids the engine receives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

UNK, BOS, EOS, FIM_PRE, FIM_SUF, FIM_MID = range(6)
SPECIALS = ("<unk>", "<s>", "</s>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
FIRST_BYTE = len(SPECIALS)  # <0x00>..<0xFF> follow the specials (byte fallback)
FIRST_CHAR = FIRST_BYTE + 256  # then one token per printable ASCII character, space as "▁"
CHARS = "▁" + "".join(chr(c) for c in range(0x21, 0x7F))

N_EMBD, N_HEAD, N_LAYER, N_FF = 64, 4, 2, 128


def char_ids(text: str) -> list[int]:
    """What this vocabulary's tokenizer makes of plain ASCII text: one token per character
    (a control character such as a newline is its byte-fallback token)."""
    return [FIRST_CHAR + CHARS.index("▁" if ch == " " else ch) if ch == " " or ch in CHARS
            else FIRST_BYTE + ord(ch) for ch in text]


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    import gguf
    import numpy as np

    tokens = [*SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *CHARS]
    types = [gguf.TokenType.UNKNOWN, *[gguf.TokenType.CONTROL] * 5,
             *[gguf.TokenType.BYTE] * 256, *[gguf.TokenType.NORMAL] * len(CHARS)]
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("lokal-tiny-fim")
    writer.add_context_length(2048)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(n_vocab)])
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_unk_token_id(UNK)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    # The GGUF keys llama.cpp reads the FIM tokens from (fim_pre / fim_suf / fim_mid).
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, FIM_PRE)
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, FIM_SUF)
    writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, FIM_MID)

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", weight(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@contextlib.contextmanager
def tiny_backend(directory: Path, *, parallel: int) -> Iterator[Any]:
    """A started LlamaCppBackend over a fresh tiny GGUF in `directory`: 256 tokens of context
    per slot, `parallel` slots, one thread, 32 prompt tokens per step."""
    from lokal.backends.llamacpp.backend import LlamaCppBackend
    from lokal.backends.spec import ModelSpec

    path = write_tiny_gguf(directory / "tiny.gguf")
    spec = ModelSpec.model_validate({
        "id": "tiny", "gguf": {"path": str(path)}, "context_length": 256,
        "llamacpp": {"n_threads": 1, "parallel": parallel, "n_batch": 32}})
    engine = LlamaCppBackend(spec, reason="test")
    asyncio.run(engine.start())
    try:
        yield engine
    finally:
        asyncio.run(engine.stop())
