"""ModelPool: the one owner of model state. Configured models, their engines, leases and the
memory budget; loads on demand (once, however many ask), unloads idle models to make room or
after their ttl, never a model a request holds or waits for.

Every state change happens on the event loop, in plain code between awaits, so the loop is
the lock. Engine starts and stops run one at a time in background tasks (`_lifecycle`), which
also makes a load's memory measurement its own. Waiters sleep on `_changed`, a broadcast."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from lokal.backends.base import Backend, BackendStats, ModelInfo
from lokal.backends.budget import Resident, choose_unloads, human, resident_bytes
from lokal.backends.errors import (
    ModelLoadFailed,
    ModelNotFound,
    ModelPinned,
    ModelTooLarge,
    NotReady,
)
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool_entry import (
    HOLDS_MEMORY,
    RETRY_MAX,
    Entry,
    Lease,
    ModelState,
    Status,
)
from lokal.backends.registry import choose_backend, create_backend, estimate_footprint
from lokal.backends.spec import ModelSpec

logger = logging.getLogger(__name__)

DISCOVER_INTERVAL = 2.0
KEEP_ALIVE_MIN = 0.05
"""The shortest idle time before an unload (keep_alive 0: once the requests end)."""

Factory = Callable[[ModelSpec], Backend]
Estimator = Callable[[ModelSpec], Footprint]


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
        factory: Factory | None = None,
        estimator: Estimator | None = None,
        measure: bool = True,
        discover: Callable[[], Sequence[ModelSpec]] | None = None,
    ) -> None:
        """`budgets`: bytes per device ("cpu", "gpu"). `factory` and `estimator` replace
        the engine registry (tests); `measure=False` keeps the estimates after loading.
        `discover` lists the models configured now (a models dir's YAMLs): a request for an
        unknown name looks there once more, so a model added since start is served."""
        names: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in spec.names:
                if name in names:
                    raise ValueError(f"model name {name!r} is used twice: by "
                                     f"{_where(names[name])} and by {_where(spec)}")
                names[name] = spec
        self._specs = tuple(specs)
        self._names = names
        self._discover = discover
        self._discovered_at = -math.inf
        self._hardware = hardware
        self._forced = forced_backend
        self.budgets: dict[str, int] = dict(budgets or {"cpu": 1 << 62})
        self.max_loaded = max_loaded
        self.load_timeout = load_timeout
        self.max_waiting = max_waiting
        self._idle_unload = idle_unload
        self._preload_default = preload_default
        self._injected = factory is not None
        self._factory = factory or (lambda spec: create_backend(spec, hardware, forced_backend))
        self._estimator = estimator or (lambda spec: estimate_footprint(spec, hardware,
                                                                        forced_backend))
        self._measure = measure
        self._entries: dict[str, Entry] = {}
        self._changed = asyncio.Event()
        self._lifecycle = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.ready = False
        self.load_seconds: dict[str, float] = {}
        self.loads: dict[tuple[str, str], int] = {}
        """(model, "success" | "failure") -> loads so far."""
        self.unloads: dict[tuple[str, str], int] = {}
        """(model, "idle" | "capacity" | "request") -> unloads so far."""

    # -- set-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Choose an engine for every model and estimate its memory; fast, raises on a bad
        setup (no engine, a missing file). A file that is there but unreadable marks the
        model failed instead, so that the others still serve."""
        for spec in self._specs:
            self._add_entry(spec)

    def _add_entry(self, spec: ModelSpec) -> None:
        if self._injected:
            engine, reason = "injected", "an engine factory given to the pool"
        else:
            engine, reason = choose_backend(spec, self._hardware, self._forced)
            if spec.gguf is not None and engine == "llamacpp":
                spec.gguf_path()  # a missing file is a configuration error: stop now
        preload = spec.preload if spec.preload is not None else self._preload_default
        entry = Entry(spec, engine, reason, self._configured_ttl(spec), preload)
        self._entries[spec.id] = entry
        try:
            entry.estimate = self._estimator(spec)
        except (OSError, ValueError) as exc:
            self._fail(entry, f"cannot read the model: {exc}")
            return
        budget = self.budgets.get(entry.device, 0)
        if entry.memory > budget:
            logger.warning("model %s needs %s, more than the whole %s budget of %s: it "
                           "cannot be loaded", spec.id, human(entry.memory), entry.device,
                           human(budget))

    def _configured_ttl(self, spec: ModelSpec) -> float:
        ttl = spec.ttl if spec.ttl is not None else self._idle_unload
        return 0.0 if spec.pinned else ttl

    def _discover_new(self) -> None:
        """Adds the models configured since start (at most one look per 2 s: an unknown
        name in every request must not make each one read the models dir)."""
        now = time.monotonic()
        if self._discover is None or now - self._discovered_at < DISCOVER_INTERVAL:
            return
        self._discovered_at = now
        try:
            found = self._discover()
        except (OSError, ValueError) as exc:
            logger.warning("looking for new models failed: %s", exc)
            return
        for spec in found:
            if spec.id in self._entries or any(n in self._names for n in spec.names):
                continue
            try:
                self._add_entry(spec)
            except (OSError, ValueError) as exc:  # a missing file, no engine for it
                self._entries.pop(spec.id, None)
                logger.warning("new model %s cannot be served: %s", spec.id, exc)
                continue
            self._specs += (spec,)
            self._names.update(dict.fromkeys(spec.names, spec))
            logger.info("new model %s found (%s)", spec.id, spec.source or "configured")

    async def start(self) -> None:
        """Load the preloaded models (the pool is ready once they are), then keep unloading
        idle models whose ttl has passed. Raises if a preloaded model fails to load."""
        if not self._entries:
            self.prepare()
        self._spawn(self._reap_idle())
        for entry in self._entries.values():
            if entry.preload:  # however long it takes: a slow disk is no reason to give up
                await self._wait_loaded(entry, math.inf)
        self.ready = True

    async def stop(self) -> None:
        """Stop every engine; requests still running are answered with an error by it."""
        self.ready = False
        self._closing = True
        self._notify()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lifecycle:
            for entry in self._entries.values():
                if entry.backend is not None:
                    await self._stop_engine(entry)
                    entry.status = Status.UNLOADED
        self._notify()

    # -- what requests use ------------------------------------------------------------

    def _entry(self, name: str) -> Entry:
        spec = self._names.get(name)
        if spec is None:
            self._discover_new()
            spec = self._names.get(name)
        if spec is None:
            known = ", ".join(s.id for s in self._specs)
            raise ModelNotFound(
                f"The model `{name}` does not exist. This server serves: {known}.", param="model"
            )
        return self._entries[spec.id]

    async def acquire(self, name: str) -> Lease:
        """A lease on model `name`, loading it first if need be (waiting up to load_timeout,
        for the load or for room). Raises ModelNotFound, ModelTooLarge, ModelLoadFailed, or
        NotReady (503 with Retry-After) on timeout or a full queue."""
        entry = self._entry(name)
        if entry.status is Status.LOADED and not entry.draining:
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
        return sum(e.waiting for e in self._entries.values())

    async def _wait_loaded(self, entry: Entry, deadline: float) -> None:
        """Return once `entry` is loaded (and not draining), starting its load when it is
        not loading and room can be made."""
        if self.waiting_total() >= self.max_waiting:
            raise NotReady(f"{self.max_waiting} requests are already waiting for models to "
                           "load; try again shortly", retry_after=5, code="model_queue_full")
        entry.waiting += 1
        try:
            while True:
                now = time.monotonic()
                if self._closing:
                    raise NotReady("the server is shutting down", retry_after=5)
                if entry.status is Status.LOADED and not entry.draining:
                    return
                if entry.status is Status.FAILED and entry.retry_in(now) > 0:
                    raise ModelLoadFailed(entry.spec.id, entry.error or "unknown error")
                if entry.status in (Status.UNLOADED, Status.FAILED):
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
        if entry.status is Status.LOADING:
            return NotReady(f"model {entry.spec.id} is still loading after "
                            f"{self.load_timeout:.0f} s", retry_after=10)
        holders = ", ".join(f"{r.id} ({human(r.bytes)}, {r.why_kept()})"
                            for r in self._residents() if r.device == entry.device) or "none"
        budget = self.budgets.get(entry.device, 0)
        return NotReady(
            f"model {entry.spec.id} needs {human(entry.memory)} but the {entry.device} memory "
            f"budget of {human(budget)} is held by: {holders}; none could be unloaded within "
            f"{self.load_timeout:.0f} s", retry_after=10, code="insufficient_memory")

    def _residents(self) -> list[Resident]:
        return [Resident(e.spec.id, e.memory, e.device, e.last_used, pinned=e.spec.pinned,
                         busy=bool(e.leases or e.waiting), leaving=e.status is Status.UNLOADING)
                for e in self._entries.values() if e.status in HOLDS_MEMORY]

    def _try_load(self, entry: Entry) -> None:
        """Start loading `entry` if room can be made now, unloading idle models first."""
        if entry.estimate is None:
            try:
                entry.estimate = self._estimator(entry.spec)
            except (OSError, ValueError) as exc:
                self._fail(entry, f"cannot read the model: {exc}")
                raise ModelLoadFailed(entry.spec.id, entry.error or "") from exc
        budget = self.budgets.get(entry.device, 0)
        if entry.memory > budget:
            raise ModelTooLarge(entry.spec.id, entry.memory, entry.device, budget)
        victims = choose_unloads(entry.memory, entry.device, self.budgets, self._residents(),
                                 self.max_loaded)
        if victims is None:
            return  # wait: something in use must finish or unload first
        entry.status = Status.LOADING
        entry.error = None
        gone = [self._entries[v] for v in victims]
        for victim in gone:
            victim.status = Status.UNLOADING
            logger.info("unloading %s to make room for %s", victim.spec.id, entry.spec.id)
        self._spawn(self._make_room_and_load(entry, gone))
        self._notify()

    async def _make_room_and_load(self, entry: Entry, victims: list[Entry]) -> None:
        async with self._lifecycle:
            for victim in victims:
                await self._unload_now(victim, "capacity")
            if self._closing:
                entry.status = Status.UNLOADED
                self._notify()
                return
            before = resident_bytes()
            started = time.perf_counter()
            backend: Backend | None = None
            try:
                backend = self._factory(entry.spec)
                await backend.start()
            except asyncio.CancelledError:
                if backend is not None:
                    await backend.stop()
                raise
            except Exception as exc:
                logger.exception("loading model %s failed", entry.spec.id)
                if backend is not None:
                    try:
                        await backend.stop()
                    except Exception:
                        logger.exception("cleaning up after the failed load of %s failed",
                                         entry.spec.id)
                self._fail(entry, _reason(exc))
                _count(self.loads, entry.spec.id, "failure")
                return
            seconds = time.perf_counter() - started
            after = resident_bytes()
            # llama.cpp allocates in this process; vLLM's engine core is another process.
            if self._measure and before is not None and after is not None \
                    and backend.info.backend == "llamacpp":
                entry.measured = max(after - before, 0)
            entry.backend = backend
            entry.info = backend.info
            entry.status = Status.LOADED
            entry.failures = 0
            entry.last_used = time.monotonic()
            self.load_seconds[entry.spec.id] = seconds
            _count(self.loads, entry.spec.id, "success")
            logger.info("model %s loaded in %.2f s on %s (%s); memory %s %s", entry.spec.id,
                        seconds, entry.info.backend, entry.info.backend_reason,
                        human(entry.memory), "measured" if entry.measured is not None
                        else "estimated")
            self._notify()

    def _fail(self, entry: Entry, reason: str) -> None:
        entry.status = Status.FAILED
        entry.error = reason
        entry.failures += 1
        entry.failed_at = time.monotonic()
        entry.backend = None
        self._notify()

    async def _unload_now(self, entry: Entry, reason: str) -> None:
        """Stop `entry`'s engine (the caller holds the lifecycle lock, and no lease is held)."""
        entry.status = Status.UNLOADING
        await self._stop_engine(entry)
        entry.status = Status.UNLOADED
        entry.draining = False
        entry.ttl = self._configured_ttl(entry.spec)  # a keep_alive lasts one load
        _count(self.unloads, entry.spec.id, reason)
        logger.info("model %s unloaded (%s)", entry.spec.id, reason)
        self._notify()

    async def _stop_engine(self, entry: Entry) -> None:
        backend, entry.backend = entry.backend, None
        if backend is not None:
            try:
                await backend.stop()
            except Exception:
                logger.exception("stopping model %s failed", entry.spec.id)

    # -- explicit control -------------------------------------------------------------

    async def load(self, name: str) -> ModelState:
        """Load `name` now (a failed model is retried at once); returns its state."""
        entry = self._entry(name)
        if entry.status is Status.FAILED:
            entry.failed_at = -RETRY_MAX  # an explicit load skips the back-off
        await self._wait_loaded(entry, time.monotonic() + self.load_timeout)
        return self.state(entry.spec.id)

    async def unload(self, name: str, force: bool = False) -> ModelState:
        """Unload `name` once its running requests end; pinned models only with `force`."""
        entry = self._entry(name)
        if entry.spec.pinned and not force:
            raise ModelPinned(entry.spec.id)
        if entry.status is Status.LOADING or entry.status is Status.UNLOADING:
            await self._until(lambda: entry.status not in (Status.LOADING, Status.UNLOADING))
        if entry.status is Status.LOADED:
            entry.draining = True
            self._notify()
            try:
                await self._until(lambda: entry.leases == 0)
                async with self._lifecycle:
                    if entry.status is Status.LOADED:
                        await self._unload_now(entry, "request")
            finally:
                entry.draining = False
                self._notify()
        return self.state(entry.spec.id)

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """Ollama's keep_alive: `name` unloads once idle for `seconds` (0: as soon as its
        requests end; math.inf: never), until it next unloads; None: its configured ttl.
        Pinned models keep theirs."""
        entry = self._entry(name)
        if entry.spec.pinned:
            return
        if seconds is None:
            entry.ttl = self._configured_ttl(entry.spec)
        else:
            entry.ttl = 0.0 if math.isinf(seconds) else max(seconds, KEEP_ALIVE_MIN)

    def unloads_in(self, name: str) -> float | None:
        """Seconds until `name` unloads if no request comes (None: never)."""
        entry = self._entry(name)
        if entry.ttl <= 0:
            return None
        if entry.leases or entry.waiting:
            return entry.ttl
        return max(entry.ttl - (time.monotonic() - entry.last_used), 0.0)

    def spec(self, name: str) -> ModelSpec:
        """The configuration of model `name` (an id or alias)."""
        return self._entry(name).spec

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    async def _reap_idle(self) -> None:
        """Unload idle models whose ttl has passed."""
        while True:
            ttls = [e.ttl for e in self._entries.values() if e.ttl > 0]
            await asyncio.sleep(max(min([1.0, *(t / 4 for t in ttls)]), KEEP_ALIVE_MIN))
            now = time.monotonic()
            for entry in self._entries.values():
                idle = entry.status is Status.LOADED and not (entry.leases or entry.waiting
                                                                or entry.draining)
                if idle and entry.ttl > 0 and now - entry.last_used >= entry.ttl:
                    entry.status = Status.UNLOADING
                    self._spawn(self._unload_idle(entry))

    async def _unload_idle(self, entry: Entry) -> None:
        async with self._lifecycle:
            if entry.waiting or entry.leases:  # a request came while the lock was busy
                entry.status = Status.LOADED
                self._notify()
                return
            await self._unload_now(entry, "idle")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what the server shows ----------------------------------------------------------

    def state(self, model_id: str) -> ModelState:
        return self._entries[model_id].snapshot()

    def find(self, name: str) -> ModelState:
        return self.state(self._entry(name).spec.id)

    def states(self) -> list[ModelState]:
        return [self.state(model_id) for model_id in self._entries]

    def models(self) -> list[ModelInfo]:
        """The engines' info of the loaded models."""
        return [e.info for e in self._entries.values() if e.status is Status.LOADED]

    def stats(self) -> dict[str, BackendStats]:
        """A snapshot per loaded model whose engine reports one (`stats()` is optional)."""
        found: dict[str, BackendStats] = {}
        for model_id, entry in self._entries.items():
            stats = getattr(entry.backend, "stats", None)
            if entry.status is Status.LOADED and callable(stats):
                found[model_id] = stats()
        return found

    def engine_errors(self) -> dict[str, str]:
        """Models whose engine died, and why (see BackendStats.engine_error)."""
        return {model_id: stats.engine_error for model_id, stats in self.stats().items()
                if stats.engine_error is not None}


def _count(counter: dict[tuple[str, str], int], model: str, label: str) -> None:
    counter[model, label] = counter.get((model, label), 0) + 1


def _where(spec: ModelSpec) -> str:
    return f"{spec.source}" if spec.source is not None else f"model {spec.id!r}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
