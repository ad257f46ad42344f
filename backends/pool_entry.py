"""One configured model's state in the pool (status, memory, leases, failures), the snapshot
/v1/models shows, and the lease a request holds. Only ModelPool changes an Entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from lokal.backends.base import Backend, ModelInfo
from lokal.backends.footprint import Footprint
from lokal.backends.spec import ModelSpec

RETRY_FIRST = 5.0
RETRY_MAX = 300.0
"""Back-off before a request retries a failed load: 5 s, doubling, at most 5 minutes."""


class Status(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


HOLDS_MEMORY = (Status.LOADING, Status.LOADED, Status.UNLOADING)


@dataclass(frozen=True, slots=True)
class ModelState:
    """One configured model as /v1/models and the metrics show it."""

    id: str
    status: Status
    memory_bytes: int
    measured: bool
    device: str
    pinned: bool
    ttl: float
    error: str | None
    info: ModelInfo
    """The engine's info when loaded; before that, what the configuration says."""
    running: int
    waiting: int

    @property
    def chat_template(self) -> Literal["model", "config", "fallback"] | None:
        return self.info.chat_template


class Entry:
    def __init__(self, spec: ModelSpec, engine: str, reason: str, ttl: float,
                 preload: bool) -> None:
        self.spec = spec
        self.engine = engine
        self.reason = reason
        self.ttl = ttl
        self.preload = preload
        self.status = Status.UNLOADED
        self.backend: Backend | None = None
        self.info = ModelInfo(id=spec.id, context_length=spec.context_length, backend=engine,
                              backend_reason=reason, device="", owned_by=spec.owned_by,
                              chat_template="config" if spec.chat_template else None)
        self.estimate: Footprint | None = None
        self.measured: int | None = None
        self.error: str | None = None
        self.failures = 0
        self.failed_at = 0.0
        self.leases = 0
        self.waiting = 0
        self.last_used = 0.0
        self.draining = False
        """An explicit unload is waiting for running requests: new ones wait too."""

    @property
    def memory(self) -> int:
        """Bytes charged to the budget: the measured load plus the caches that fill later."""
        estimate = self.estimate.total if self.estimate is not None else 0
        if self.measured is None or self.estimate is None:
            return estimate
        return self.measured + self.estimate.prompt_cache

    @property
    def device(self) -> str:
        return self.estimate.device if self.estimate is not None else "cpu"

    def retry_in(self, now: float) -> float:
        wait = min(RETRY_FIRST * 2.0 ** max(self.failures - 1, 0), RETRY_MAX)
        return self.failed_at + wait - now

    def snapshot(self) -> ModelState:
        return ModelState(
            id=self.spec.id, status=self.status, memory_bytes=self.memory,
            measured=self.measured is not None, device=self.device, pinned=self.spec.pinned,
            ttl=self.ttl, error=self.error if self.status is Status.FAILED else None,
            info=self.info, running=self.leases, waiting=self.waiting)


class Lease:
    """A request's hold on a loaded model: the model is not unloaded until it is released."""

    def __init__(self, entry: Entry, on_release: Callable[[Entry], None]) -> None:
        assert entry.backend is not None
        self.backend: Backend = entry.backend
        self._entry = entry
        self._on_release = on_release
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._on_release(self._entry)
