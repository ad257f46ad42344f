"""Cheap NVIDIA GPU probe through NVML (nvidia-ml-py); never imports torch."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hardware:
    gpus: tuple[str, ...]
    """Names of the NVIDIA GPUs this process may use (after CUDA_VISIBLE_DEVICES)."""
    note: str
    """Why the list is what it is, for logs and /v1/models."""
    gpu_memory: int = 0
    """Bytes of memory of the smallest visible GPU (every vLLM model starts on GPU 0)."""

    @property
    def has_nvidia_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def device(self) -> str:
        return f"cuda ({self.gpus[0]}{f' x{len(self.gpus)}' if len(self.gpus) > 1 else ''})" \
            if self.gpus else "cpu"


def _visible(indices: list[int], env: str | None) -> list[int]:
    if env is None:
        return indices
    wanted: list[int] = []
    for part in env.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.lstrip("-").isdigit():
            # UUIDs or MIG ids: NVML index mapping is not attempted; trust the user.
            return indices
        index = int(part)
        if index < 0:
            break  # CUDA stops at the first invalid index
        if index in indices:
            wanted.append(index)
    return wanted


def probe() -> Hardware:
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return Hardware((), "nvidia-ml-py is not installed, so no NVIDIA GPU can be seen")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError has many subclasses; any of them means no driver.
        return Hardware((), f"no NVIDIA driver answered NVML ({exc})")
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = _visible(list(range(count)), env)
        names = []
        memory: list[int] = []
        for index in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
            memory.append(int(pynvml.nvmlDeviceGetMemoryInfo(handle).total))
    finally:
        pynvml.nvmlShutdown()
    if not names:
        why = f"CUDA_VISIBLE_DEVICES={env!r} hides them" if count and env is not None else \
            "NVML reports no GPU"
        return Hardware((), why)
    return Hardware(tuple(names), f"{len(names)} NVIDIA GPU(s) visible", min(memory))
