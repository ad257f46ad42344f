"""choose_backend: which engine serves a model on this machine, and why; imports only the winner."""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from lokal.backends.base import Backend
from lokal.backends.errors import BackendUnavailable
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.spec import ModelSpec

logger = logging.getLogger(__name__)

EngineName = Literal["llamacpp", "vllm"]


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_backend(
    spec: ModelSpec, hardware: Hardware, forced: str | None = None
) -> tuple[EngineName, str]:
    """Return (engine, reason). Raises BackendUnavailable with one clear message."""
    wanted = forced if forced not in (None, "auto") else spec.backend
    vllm_ok = hardware.has_nvidia_gpu and _importable("vllm") and spec.vllm is not None
    if wanted == "vllm":
        missing = []
        if spec.vllm is None:
            missing.append(f"model {spec.id!r} names no `vllm` source")
        if not _importable("vllm"):
            missing.append("vllm is not installed (pip install 'lokal[gpu]')")
        if missing:
            raise BackendUnavailable("backend vllm was asked for, but " + "; ".join(missing))
        where = hardware.device if hardware.has_nvidia_gpu else "no NVIDIA GPU (CPU build)"
        return "vllm", f"vllm forced by configuration; device: {where}"
    if wanted == "llamacpp" or not vllm_ok:
        if spec.gguf is None:
            raise BackendUnavailable(
                f"model {spec.id!r} has no GGUF source for llama.cpp and vLLM cannot run it: "
                + _vllm_why_not(spec, hardware)
            )
        if not _importable("llama_cpp"):
            raise BackendUnavailable("llama-cpp-python is not installed (pip install lokal)")
        if wanted == "llamacpp":
            return "llamacpp", "llamacpp forced by configuration"
        return "llamacpp", "llama.cpp on CPU: " + _vllm_why_not(spec, hardware)
    return "vllm", f"vLLM on {hardware.device}: {hardware.note} and a vllm source is configured"


def check_files(spec: ModelSpec, engine: EngineName) -> None:
    """Raise FileNotFoundError now if a local file `engine` reads for `spec` is missing (a
    configuration error); vLLM resolves its own source (a hub name or a folder) as it loads."""
    if engine == "llamacpp":
        spec.gguf_path()


def _vllm_why_not(spec: ModelSpec, hardware: Hardware) -> str:
    if not hardware.has_nvidia_gpu:
        return hardware.note
    if not _importable("vllm"):
        return "an NVIDIA GPU is visible but vllm is not installed"
    if spec.vllm is None:
        return "an NVIDIA GPU is visible but the model config names no vllm source"
    return "vLLM not chosen"


def create_backend(spec: ModelSpec, hardware: Hardware, forced: str | None = None) -> Backend:
    engine, reason = choose_backend(spec, hardware, forced)
    logger.info("model %s: backend %s (%s)", spec.id, engine, reason)
    if engine == "llamacpp":
        from lokal.backends.llamacpp.backend import LlamaCppBackend

        return LlamaCppBackend(spec, reason=reason)
    from lokal.backends.vllm.backend import VllmBackend

    return VllmBackend(spec, hardware, reason=reason)


def estimate_footprint(spec: ModelSpec, hardware: Hardware, forced: str | None = None) -> Footprint:
    """The memory `spec` will hold on the engine chosen for it, before loading it."""
    from lokal.backends.footprint import llamacpp_footprint, vllm_footprint

    engine, _ = choose_backend(spec, hardware, forced)
    if engine == "llamacpp":
        return llamacpp_footprint(spec)
    from lokal.backends.vllm.backend import engine_args

    return vllm_footprint(spec, engine_args(spec), hardware)
