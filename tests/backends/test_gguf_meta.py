"""The GGUF header reader: the keys the footprint needs, and clean errors on bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.backends.footprint import llamacpp_footprint
from lokal.backends.gguf_meta import GgufError, read_gguf_meta
from lokal.backends.spec import ModelSpec
from tests.tiny_gguf import CHARS, N_EMBD, N_HEAD, N_LAYER, SPECIALS, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_reads_architecture_shape_and_vocabulary(tiny: Path) -> None:
    meta = read_gguf_meta(tiny)
    assert meta.architecture == "llama"
    assert meta.arch("block_count") == N_LAYER
    assert meta.arch("embedding_length") == N_EMBD
    assert meta.arch("attention.head_count_kv") == N_HEAD
    assert meta.vocab_size == len(SPECIALS) + 256 + len(CHARS)
    assert not meta.has_chat_template
    assert meta.file_bytes == tiny.stat().st_size


def test_footprint_counts_kv_for_every_slot(tiny: Path) -> None:
    spec = ModelSpec.model_validate({"id": "t", "gguf": {"path": str(tiny)},
                                     "context_length": 256, "llamacpp": {"parallel": 4}})
    kv_per_token = N_LAYER * N_HEAD * 2 * (N_EMBD // N_HEAD) * 2  # K and V, f16
    footprint = llamacpp_footprint(spec)
    assert footprint.kv_cache == kv_per_token * 256 * 4
    assert footprint.prompt_cache == 1024 * 2**20
    assert footprint.total == footprint.at_load + footprint.prompt_cache
    assert footprint.weights >= tiny.stat().st_size


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty"])
def test_damaged_files_raise_gguf_error(tiny: Path, tmp_path: Path, damage: str) -> None:
    data = tiny.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes({"magic": b"GGML" + data[4:], "truncated": data[:200], "empty": b""}[damage])
    with pytest.raises(GgufError):
        read_gguf_meta(bad)
