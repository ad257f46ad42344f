"""One configured model's state in the pool: its phase and the table of the moves between
phases, memory, leases, failures; the snapshot /v1/models shows; the lease a request holds.
Only the pool (pool.py and its pool_*.py modules) changes an Entry."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

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


class Phase(StrEnum):
    """Where a model is in its life as the pool tracks it; `status` is what the API shows."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    DRAINING = "draining"
    """An unload was asked for: running requests finish, new ones wait until it is done."""
    EXPIRING = "expiring"
    """Idle past its ttl and waiting its turn to unload (engine starts and stops go one at a
    time); the engine still runs, and a request that comes meanwhile calls the unload off."""
    UNLOADING = "unloading"
    FAILED = "failed"

    @property
    def status(self) -> Status:
        return SHOWN[self]


SHOWN: Final[Mapping[Phase, Status]] = {
    Phase.UNLOADED: Status.UNLOADED, Phase.LOADING: Status.LOADING,
    Phase.LOADED: Status.LOADED, Phase.UNLOADING: Status.UNLOADING, Phase.FAILED: Status.FAILED,
    # A draining model still serves its running requests; an expiring one takes no new ones.
    Phase.DRAINING: Status.LOADED, Phase.EXPIRING: Status.UNLOADING,
}

MOVES: Final[Mapping[Phase, frozenset[Phase]]] = {
    Phase.UNLOADED: frozenset({
        Phase.LOADING,
        Phase.FAILED,  # its file cannot be read, found when it is configured
    }),
    Phase.LOADING: frozenset({
        Phase.LOADED, Phase.FAILED,
        Phase.UNLOADED,  # the pool stopped before its engine started
    }),
    Phase.LOADED: frozenset({
        Phase.DRAINING, Phase.EXPIRING,
        Phase.UNLOADING,  # chosen to make room for another model
        Phase.UNLOADED,  # the pool stopped
    }),
    Phase.DRAINING: frozenset({
        Phase.UNLOADING,  # its requests ended (or, none left, it was chosen to make room)
        Phase.LOADED,  # whoever asked for the unload gave up waiting (cancelled)
        Phase.UNLOADED,  # the pool stopped
    }),
    Phase.EXPIRING: frozenset({
        Phase.UNLOADING,
        # A request came while the unload waited for its turn: the engine never stopped, so it
        # serves that request instead of an unload and a reload.
        Phase.LOADED,
        Phase.UNLOADED,  # the pool stopped
    }),
    Phase.UNLOADING: frozenset({Phase.UNLOADED}),
    Phase.FAILED: frozenset({
        Phase.LOADING,  # retried after the back-off, or at once by an explicit load
        Phase.FAILED,  # that retry failed before an engine started (the file is still unreadable)
    }),
}
"""Every move the pool makes; any other is a bug in the pool, and Entry.move raises on it."""

HOLDS_MEMORY = frozenset({Phase.LOADING, Phase.LOADED, Phase.DRAINING, Phase.EXPIRING,
                          Phase.UNLOADING})


class IllegalMove(RuntimeError):
    """A phase change the table (MOVES) does not allow: a bug in the pool, never a user's."""


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
        self.configured_ttl = ttl
        self.ttl = ttl
        """Seconds idle before an unload (0: never); a keep_alive changes it until the unload."""
        self.preload = preload
        self._phase = Phase.UNLOADED
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

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def status(self) -> Status:
        return self._phase.status

    def move(self, to: Phase) -> None:
        """The one way the phase changes (see MOVES)."""
        if to not in MOVES[self._phase]:
            raise IllegalMove(f"model {self.spec.id}: the pool never moves {self._phase} -> {to}")
        self._phase = to

    def fail(self, reason: str) -> None:
        """A load failed: FAILED, why, and when (for the back-off before the next try)."""
        self.move(Phase.FAILED)
        self.error = reason
        self.failures += 1
        self.failed_at = time.monotonic()
        self.backend = None

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
