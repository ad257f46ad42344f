"""lokal's configured models as Ollama describes models: /api/tags entries, /api/show and
/api/ps, from the model YAML, its GGUF header and the pool's state."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lokal.backends.gguf_meta import ArrayInfo, GgufError, GgufMeta, read_gguf_meta
from lokal.backends.pool import ModelPool
from lokal.backends.pool_entry import ModelState, Status
from lokal.backends.spec import ModelSpec
from lokal.server.doors.ollama.translate import ollama_name

# llama.cpp's LLAMA_FTYPE values (general.file_type) by name.
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
               10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
               15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
               20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
               25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS",
               31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0"}
FOREVER = timedelta(days=365 * 292)  # Ollama's expiry for keep_alive < 0: now + max duration


@dataclass(frozen=True, slots=True)
class Described:
    """What Ollama shows of one model: file, size, digest, details, GGUF metadata."""

    name: str
    path: Path | None
    size: int
    modified_at: str
    digest: str
    details: dict[str, Any]
    meta: GgufMeta | None


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def describe(spec: ModelSpec) -> Described:
    """Reads only the GGUF header (milliseconds); the digest hashes the file's path, size and
    modification time, which change when the file does, never its gigabytes."""
    path: Path | None = None
    meta: GgufMeta | None = None
    if spec.gguf is not None:
        try:
            path = spec.gguf_path()
            meta = read_gguf_meta(path)
        except (OSError, GgufError):
            meta = None
    stat = path.stat() if path is not None and path.exists() else None
    source = stat or (spec.source.stat() if spec.source is not None else None)
    identity = f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat is not None \
        else f"{spec.id}:{spec.vllm.model if spec.vllm else ''}"
    family = meta.architecture if meta is not None else ""
    details = {"parent_model": "", "format": "gguf" if spec.gguf is not None else "safetensors",
               "family": family, "families": [family] if family else None,
               "parameter_size": str(meta.fields.get("general.size_label", "")) if meta else "",
               "quantization_level": _FILE_TYPES.get(meta.fields.get("general.file_type", -1),
                                                     "") if meta else ""}
    return Described(ollama_name(spec.id), path, stat.st_size if stat else 0,
                     _timestamp(source.st_mtime if source is not None else 0.0),
                     hashlib.sha256(identity.encode()).hexdigest(), details, meta)


def tag_entry(d: Described) -> dict[str, Any]:
    return {"name": d.name, "model": d.name, "modified_at": d.modified_at, "size": d.size,
            "digest": d.digest, "details": d.details}


def _template(spec: ModelSpec, meta: GgufMeta | None) -> str:
    if spec.chat_template:
        return spec.chat_template
    found = meta.fields.get("tokenizer.chat_template") if meta is not None else None
    return found if isinstance(found, str) else ""


def capabilities(spec: ModelSpec, state: ModelState) -> list[str]:
    caps = state.info.capabilities
    out = ["completion"]
    if caps.tools:
        out.append("tools")
    if caps.fim:
        out.append("insert")
    if spec.embeddings.enabled or caps.embeddings:
        out.append("embedding")
    return out


def show(spec: ModelSpec, state: ModelState, d: Described, verbose: bool) -> dict[str, Any]:
    """/api/show. model_info carries the GGUF header's scalars, with the context length
    set to the one lokal serves (what a client may fill), not the one the model trained on."""
    context = state.info.context_length
    info: dict[str, Any] = {}
    if d.meta is not None:
        for key, value in d.meta.fields.items():
            if isinstance(value, ArrayInfo):
                if verbose:
                    info[key] = []
                continue
            if key == "tokenizer.chat_template":
                continue
            info[key] = value
        info[f"{d.meta.architecture}.context_length"] = context
    else:
        info["general.architecture"] = ""
    lines = [f"# Served by lokal from {spec.source or 'the command line'}",
             f"FROM {d.path or (spec.vllm.model if spec.vllm else spec.id)}",
             f"PARAMETER num_ctx {context}"]
    return {"modelfile": "\n".join(lines) + "\n", "parameters": f"num_ctx {context}",
            "template": _template(spec, d.meta), "details": d.details, "model_info": info,
            "capabilities": capabilities(spec, state), "modified_at": d.modified_at,
            "license": str(d.meta.fields.get("general.license", "")) if d.meta else ""}


def running(pool: ModelPool) -> list[dict[str, Any]]:
    """/api/ps: the loaded models, with when they unload if left idle."""
    out = []
    now = datetime.now(UTC)
    for state in pool.states():
        if state.status is not Status.LOADED:
            continue
        d = describe(pool.spec(state.id))
        left = pool.unloads_in(state.id)
        expires = now + (FOREVER if left is None else timedelta(seconds=left))
        gpu = (state.info.device or state.device) != "cpu"
        out.append({"name": d.name, "model": d.name, "size": state.memory_bytes,
                    "digest": d.digest, "details": d.details,
                    "expires_at": expires.isoformat().replace("+00:00", "Z"),
                    "size_vram": state.memory_bytes if gpu else 0,
                    "context_length": state.info.context_length})
    return out
