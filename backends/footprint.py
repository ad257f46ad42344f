"""Estimate a model's memory before loading it: from its GGUF header and YAML (llama.cpp), or
from its files and engine arguments (vLLM). The pool budgets with these until it has measured."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lokal.backends.gguf_meta import GgufMeta, read_gguf_meta
from lokal.backends.hardware import Hardware
from lokal.backends.spec import ModelSpec

MiB = 1 << 20
GiB = 1 << 30
KV_BYTES = 2  # lokal's llama.cpp contexts keep K and V in f16 (llama.cpp's default)
VOCAB_ENTRY_BYTES = 160
"""llama.cpp's per-token vocabulary data (text, score, attributes, lookup maps), measured:
~40 MiB for Gemma 3's 262k tokens."""
CONTEXT_OVERHEAD = 16 * MiB
"""Compute graph and scratch buffers of one context at lokal's batch sizes, measured as what
remains of RSS after weights, KV and outputs (12-16 MiB for SmolLM2 and Gemma 3 here)."""
VLLM_CPU_KV_DEFAULT = 4 * GiB  # vLLM's CPU KV space when VLLM_CPU_KVCACHE_SPACE is unset


@dataclass(frozen=True, slots=True)
class Footprint:
    """Bytes a model holds once loaded, by part, and the device they are charged to."""

    device: str  # "cpu" (host RAM) or "gpu" (per-GPU memory)
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    embeddings: int = 0
    prompt_cache: int = 0
    """Grows after load up to its cap; charged at the cap from the start."""

    @property
    def at_load(self) -> int:
        """What loading itself allocates (what a measurement of the load sees)."""
        return self.weights + self.kv_cache + self.compute + self.embeddings

    @property
    def total(self) -> int:
        return self.at_load + self.prompt_cache


def _kv_bytes_per_token(meta: GgufMeta) -> int:
    layers = int(meta.arch("block_count", 0) or 0)
    heads = int(meta.arch("attention.head_count", 1) or 1)
    heads_kv = int(meta.arch("attention.head_count_kv", heads) or heads)
    embd = int(meta.arch("embedding_length", 0) or 0)
    k_len = int(meta.arch("attention.key_length", embd // heads) or 0)
    v_len = int(meta.arch("attention.value_length", embd // heads) or 0)
    return layers * heads_kv * (k_len + v_len) * KV_BYTES


def llamacpp_footprint(spec: ModelSpec, meta: GgufMeta | None = None) -> Footprint:
    """Weights (the file), vocabulary, KV for context_length x parallel cells in f16, the logits
    buffer of every slot, compute buffers, the embeddings context and the prompt-cache cap."""
    if meta is None:
        meta = read_gguf_meta(spec.gguf_path())
    opts = spec.llamacpp
    per_token = _kv_bytes_per_token(meta)
    n_vocab = meta.vocab_size
    embeddings = 0
    if spec.embeddings.enabled:
        emb = spec.embeddings
        n_embd = int(meta.arch("embedding_length", 0) or 0)
        embeddings = (per_token * emb.batch_tokens + n_vocab * 4 * emb.batch_inputs
                      + n_embd * 4 * emb.batch_tokens + CONTEXT_OVERHEAD)
    return Footprint(
        device="cpu",
        weights=meta.file_bytes + n_vocab * VOCAB_ENTRY_BYTES,
        kv_cache=per_token * spec.context_length * opts.parallel,
        compute=n_vocab * 4 * opts.parallel + CONTEXT_OVERHEAD,
        embeddings=embeddings,
        prompt_cache=opts.prompt_cache_mib * MiB,
    )


def _files_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*")
               if p.suffix in (".safetensors", ".bin", ".pt", ".gguf") and p.is_file())


def vllm_footprint(spec: ModelSpec, args: dict[str, object], hardware: Hardware) -> Footprint:
    """On a GPU: what vLLM claims on each GPU it uses, gpu_memory_utilization of it unless a
    KV size is given (then the weights' share plus that KV). On the CPU build: weights (widened
    to float32 when asked) plus its KV space."""
    model_dir = Path(str(args["model"]))
    weights = _files_bytes(model_dir) if model_dir.is_dir() else 0
    kv = args.get("kv_cache_memory_bytes")
    if hardware.has_nvidia_gpu:
        gpus = int(str(args.get("tensor_parallel_size", 1))) * \
            int(str(args.get("pipeline_parallel_size", 1)))
        if kv is None:
            share = float(str(args.get("gpu_memory_utilization", 0.9)))
            return Footprint("gpu", kv_cache=int(share * hardware.gpu_memory))
        return Footprint("gpu", weights=weights // max(gpus, 1), kv_cache=int(str(kv)),
                         compute=512 * MiB)
    if str(args.get("dtype", "")) in ("float32", "float"):
        weights *= 2  # converted checkpoints are 16-bit on disk
    if kv is None:
        space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
        kv = int(float(space) * GiB) if space.strip() not in ("", "0") else VLLM_CPU_KV_DEFAULT
    return Footprint("cpu", weights=weights, kv_cache=int(str(kv)), compute=256 * MiB)
