"""ModelPool: the one owner of model state. Configured models, their engines, leases and the
memory budget; loads on demand (once, however many ask), unloads idle models to make room or
after their ttl, never a model a request holds or waits for.

Every state change happens on the event loop, in plain code between awaits, so the loop is
the lock; each goes through Entry.move and its table. Engine starts and stops run one at a
time in background tasks (pool_lifecycle). Waiters sleep on `_changed`, a broadcast."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from lokal.backends.base import Backend, BackendStats, ModelInfo
from lokal.backends.budget import choose_unloads, human
from lokal.backends.errors import ModelLoadFailed, ModelPinned, ModelTooLarge, NotReady
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool_catalog import Catalog
from lokal.backends.pool_entry import RETRY_MAX, Entry, Lease, ModelState, Phase, Status
from lokal.backends.pool_lifecycle import KEEP_ALIVE_MIN, Lifecycle
from lokal.backends.registry import check_files, choose_backend, create_backend, estimate_footprint
from lokal.backends.spec import ModelSpec

logger = logging.getLogger(__name__)


class ModelPool:
    def __init__(
        self,
        specs: Sequence[ModelSpec],
        hardware: Hardware,
        forced_backend: str | None = None,
        *,
        budgets: Mapping[str, int] | None = None,
        max_loaded: int | None = None,
        load_timeout: float = 300.0,
        idle_unload: float = 0.0,
        max_waiting: int = 256,
        preload_default: bool = True,
        factory: Callable[[ModelSpec], Backend] | None = None,
        estimator: Callable[[ModelSpec], Footprint] | None = None,
        measure: bool = True,
        discover: Callable[[], Sequence[ModelSpec]] | None = None,
    ) -> None:
        """`budgets`: bytes per device ("cpu", "gpu"). `factory` and `estimator` replace
        the engine registry (tests); `measure=False` keeps the estimates after loading.
        `discover` lists the models configured now (a models dir's YAMLs): a request for an
        unknown name looks there once more, so a model added since start is served."""
        self._hardware = hardware
        self._forced = forced_backend
        self.budgets: dict[str, int] = dict(budgets or {"cpu": 1 << 62})
        self.max_loaded = max_loaded
        self.load_timeout = load_timeout
        self.max_waiting = max_waiting
        self._catalog = Catalog(
            specs, self._choose if factory is None else _injected,
            estimator or (lambda spec: estimate_footprint(spec, hardware, forced_backend)),
            self.budgets, idle_unload=idle_unload, preload_default=preload_default,
            discover=discover)
        self._changed = asyncio.Event()
        self._life = Lifecycle(
            factory or (lambda spec: create_backend(spec, hardware, forced_backend)),
            self._notify, measure=measure)
        self.ready = False
        self.load_seconds = self._life.load_seconds
        self.loads = self._life.loads
        """(model, "success" | "failure") -> loads so far."""
        self.unloads = self._life.unloads
        """(model, "idle" | "capacity" | "request") -> unloads so far."""

    # -- set-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Choose an engine for every model and estimate its memory; fast, raises on a bad
        setup (no engine, a missing file). A file that is there but unreadable marks the
        model failed instead, so that the others still serve."""
        self._catalog.prepare()

    def _choose(self, spec: ModelSpec) -> tuple[str, str]:
        engine, reason = choose_backend(spec, self._hardware, self._forced)
        check_files(spec, engine)  # a missing file is a configuration error: stop now
        return engine, reason

    async def start(self) -> None:
        """Load the preloaded models (the pool is ready once they are), then keep unloading
        idle models whose ttl has passed. Raises if a preloaded model fails to load."""
        if not self._catalog.entries:
            self.prepare()
        self._life.reap_idle(self._catalog.entries)
        for entry in self._catalog.entries.values():
            if entry.preload:  # however long it takes: a slow disk is no reason to give up
                await self._wait_loaded(entry, math.inf)
        self.ready = True

    async def stop(self) -> None:
        """Stop every engine; requests still running are answered with an error by it."""
        self.ready = False
        await self._life.stop(self._catalog.entries.values())

    # -- what requests use ------------------------------------------------------------

    async def acquire(self, name: str) -> Lease:
        """A lease on model `name`, loading it first if need be (waiting up to load_timeout,
        for the load or for room). Raises ModelNotFound, ModelTooLarge, ModelLoadFailed, or
        NotReady (503 with Retry-After) on timeout or a full queue."""
        entry = self._catalog.find(name)
        if entry.phase is Phase.LOADED:
            return self._lease(entry)
        deadline = time.monotonic() + self.load_timeout
        await self._wait_loaded(entry, deadline)
        return self._lease(entry)

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Backend]:
        held = await self.acquire(name)
        try:
            yield held.backend
        finally:
            held.release()

    def _lease(self, entry: Entry) -> Lease:
        entry.leases += 1
        entry.last_used = time.monotonic()
        return Lease(entry, self._release)

    def _release(self, entry: Entry) -> None:
        entry.leases -= 1
        entry.last_used = time.monotonic()
        self._notify()

    def waiting_total(self) -> int:
        return sum(e.waiting for e in self._catalog.entries.values())

    async def _wait_loaded(self, entry: Entry, deadline: float) -> None:
        """Return once `entry` is LOADED, starting its load when it is unloaded or failed
        and room can be made."""
        if self.waiting_total() >= self.max_waiting:
            raise NotReady(f"{self.max_waiting} requests are already waiting for models to "
                           "load; try again shortly", retry_after=5, code="model_queue_full")
        entry.waiting += 1
        try:
            while True:
                now = time.monotonic()
                if self._life.closing:
                    raise NotReady("the server is shutting down", retry_after=5)
                if entry.phase is Phase.LOADED:
                    return
                if entry.phase is Phase.FAILED and entry.retry_in(now) > 0:
                    raise ModelLoadFailed(entry.spec.id, entry.error or "unknown error")
                if entry.phase in (Phase.UNLOADED, Phase.FAILED):
                    self._try_load(entry)
                remaining = deadline - now
                if remaining <= 0:
                    raise self._timeout(entry)
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(),
                                           None if remaining == math.inf else remaining)
                except TimeoutError:
                    pass
        finally:
            entry.waiting -= 1

    def _timeout(self, entry: Entry) -> NotReady:
        if entry.phase is Phase.LOADING:
            return NotReady(f"model {entry.spec.id} is still loading after "
                            f"{self.load_timeout:.0f} s", retry_after=10)
        holders = ", ".join(f"{r.id} ({human(r.bytes)}, {r.why_kept()})" for r in
                            self._catalog.residents() if r.device == entry.device) or "none"
        budget = self.budgets.get(entry.device, 0)
        return NotReady(
            f"model {entry.spec.id} needs {human(entry.memory)} but the {entry.device} memory "
            f"budget of {human(budget)} is held by: {holders}; none could be unloaded within "
            f"{self.load_timeout:.0f} s", retry_after=10, code="insufficient_memory")

    def _try_load(self, entry: Entry) -> None:
        """Start loading `entry` if room can be made now, unloading idle models first."""
        if entry.estimate is None:
            try:
                self._catalog.estimate(entry)
            except ModelLoadFailed:
                self._notify()
                raise
        budget = self.budgets.get(entry.device, 0)
        if entry.memory > budget:
            raise ModelTooLarge(entry.spec.id, entry.memory, entry.device, budget)
        victims = choose_unloads(entry.memory, entry.device, self.budgets,
                                 self._catalog.residents(), self.max_loaded)
        if victims is None:
            return  # wait: something in use must finish or unload first
        entry.move(Phase.LOADING)
        entry.error = None
        gone = [self._catalog.entries[v] for v in victims]
        for victim in gone:
            victim.move(Phase.UNLOADING)
            logger.info("unloading %s to make room for %s", victim.spec.id, entry.spec.id)
        self._life.load(entry, gone)
        self._notify()

    # -- explicit control -------------------------------------------------------------

    async def load(self, name: str) -> ModelState:
        """Load `name` now (a failed model is retried at once); returns its state."""
        entry = self._catalog.find(name)
        if entry.phase is Phase.FAILED:
            entry.failed_at = -RETRY_MAX  # an explicit load skips the back-off
        await self._wait_loaded(entry, time.monotonic() + self.load_timeout)
        return self.state(entry.spec.id)

    async def unload(self, name: str, force: bool = False) -> ModelState:
        """Unload `name` once its running requests end; pinned models only with `force`."""
        entry = self._catalog.find(name)
        if entry.spec.pinned and not force:
            raise ModelPinned(entry.spec.id)
        passing = (Phase.LOADING, Phase.DRAINING, Phase.EXPIRING, Phase.UNLOADING)
        if entry.phase in passing:  # a load, unload or drain is under way: see how it ends
            await self._until(lambda: entry.phase not in passing)
        if entry.phase is Phase.LOADED:
            await self._drain(entry)
        return self.state(entry.spec.id)

    async def _drain(self, entry: Entry) -> None:
        """Unload `entry` once its running requests end; new ones wait meanwhile."""
        entry.move(Phase.DRAINING)
        self._notify()
        try:
            await self._until(lambda: entry.leases == 0)
            await self._life.unload_drained(entry)
        finally:
            if entry.phase is Phase.DRAINING:  # cancelled before the unload began
                entry.move(Phase.LOADED)
            self._notify()

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """Ollama's keep_alive: `name` unloads once idle for `seconds` (0: as soon as its
        requests end; math.inf: never), until it next unloads; None: its configured ttl.
        Pinned models keep theirs."""
        entry = self._catalog.find(name)
        if entry.spec.pinned:
            return
        if seconds is None:
            entry.ttl = entry.configured_ttl
        else:
            entry.ttl = 0.0 if math.isinf(seconds) else max(seconds, KEEP_ALIVE_MIN)

    def unloads_in(self, name: str) -> float | None:
        """Seconds until `name` unloads if no request comes (None: never)."""
        entry = self._catalog.find(name)
        if entry.ttl <= 0:
            return None
        if entry.leases or entry.waiting:
            return entry.ttl
        return max(entry.ttl - (time.monotonic() - entry.last_used), 0.0)

    def spec(self, name: str) -> ModelSpec:
        """The configuration of model `name` (an id or alias)."""
        return self._catalog.find(name).spec

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what the server shows ----------------------------------------------------------

    def state(self, model_id: str) -> ModelState:
        return self._catalog.entries[model_id].snapshot()

    def find(self, name: str) -> ModelState:
        return self.state(self._catalog.find(name).spec.id)

    def states(self) -> list[ModelState]:
        return [self.state(model_id) for model_id in self._catalog.entries]

    def models(self) -> list[ModelInfo]:
        """The engines' info of the loaded models."""
        return [e.info for e in self._catalog.entries.values() if e.status is Status.LOADED]

    def stats(self) -> dict[str, BackendStats]:
        """A snapshot per loaded model."""
        return {model_id: entry.backend.stats()
                for model_id, entry in self._catalog.entries.items()
                if entry.status is Status.LOADED and entry.backend is not None}

    def engine_errors(self) -> dict[str, str]:
        """Models whose engine died, and why (see BackendStats.engine_error)."""
        return {model_id: stats.engine_error for model_id, stats in self.stats().items()
                if stats.engine_error is not None}


def _injected(spec: ModelSpec) -> tuple[str, str]:
    return "injected", "an engine factory given to the pool"
