"""The model pool's engine starts and stops: loads (after unloading the models chosen to make
room), unloads, and the loop that unloads models idle past their ttl. They run one at a time,
in background tasks, which also makes a load's memory measurement its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from lokal.backends.base import Backend
from lokal.backends.budget import human, resident_bytes
from lokal.backends.pool_entry import Entry, Phase
from lokal.backends.spec import ModelSpec

logger = logging.getLogger(__name__)

KEEP_ALIVE_MIN = 0.05
"""The shortest idle time before an unload (keep_alive 0: once the requests end)."""


class Lifecycle:
    """Runs the pool's engine starts and stops. Loads and unloads to make room are the pool's
    decisions: it moves those entries to LOADING or UNLOADING first, so requests see them."""

    def __init__(self, factory: Callable[[ModelSpec], Backend], notify: Callable[[], None],
                 *, measure: bool) -> None:
        """`notify` wakes the pool's waiters; `measure=False` keeps the estimates after
        loading."""
        self._factory = factory
        self._notify = notify
        self._measure = measure
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.load_seconds: dict[str, float] = {}
        self.loads: dict[tuple[str, str], int] = {}
        """(model, "success" | "failure") -> loads so far."""
        self.unloads: dict[tuple[str, str], int] = {}
        """(model, "idle" | "capacity" | "request") -> unloads so far."""

    def load(self, entry: Entry, victims: list[Entry]) -> None:
        """Unload `victims` (UNLOADING), then load `entry` (LOADING), in the background."""
        self._spawn(self._make_room_and_load(entry, victims))

    def reap_idle(self, entries: Mapping[str, Entry]) -> None:
        """Keep unloading the models of `entries` (which may grow) idle past their ttl."""
        self._spawn(self._reap_idle(entries))

    async def unload_drained(self, entry: Entry) -> None:
        """Unload `entry` if it is still DRAINING once its turn comes (no lease is held)."""
        async with self._lock:
            if entry.phase is Phase.DRAINING:
                entry.move(Phase.UNLOADING)
                await self._unload_now(entry, "request")

    async def stop(self, entries: Iterable[Entry]) -> None:
        """Refuse new loads, cancel the pending starts and stops, then stop every engine."""
        self.closing = True
        self._notify()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lock:
            for entry in entries:
                if entry.backend is not None:
                    await self._stop_engine(entry)
                    entry.move(Phase.UNLOADED)
        self._notify()

    async def _make_room_and_load(self, entry: Entry, victims: list[Entry]) -> None:
        async with self._lock:
            for victim in victims:
                await self._unload_now(victim, "capacity")
            if self.closing:
                entry.move(Phase.UNLOADED)
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
                entry.fail(_reason(exc))
                self._notify()
                _count(self.loads, entry.spec.id, "failure")
                return
            seconds = time.perf_counter() - started
            after = resident_bytes()
            # Only an engine that allocates in this process grows this process's memory.
            if self._measure and before is not None and after is not None \
                    and backend.info.memory_in_process:
                entry.measured = max(after - before, 0)
            entry.backend = backend
            entry.info = backend.info
            entry.move(Phase.LOADED)
            entry.failures = 0
            entry.last_used = time.monotonic()
            self.load_seconds[entry.spec.id] = seconds
            _count(self.loads, entry.spec.id, "success")
            logger.info("model %s loaded in %.2f s on %s (%s); memory %s %s", entry.spec.id,
                        seconds, entry.info.backend, entry.info.backend_reason,
                        human(entry.memory), "measured" if entry.measured is not None
                        else "estimated")
            self._notify()

    async def _unload_now(self, entry: Entry, reason: str) -> None:
        """Stop the engine of `entry` (UNLOADING; the caller holds the lock, no lease is held)."""
        await self._stop_engine(entry)
        entry.move(Phase.UNLOADED)
        entry.ttl = entry.configured_ttl  # a keep_alive lasts one load
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

    async def _reap_idle(self, entries: Mapping[str, Entry]) -> None:
        while True:
            ttls = [e.ttl for e in entries.values() if e.ttl > 0]
            await asyncio.sleep(max(min([1.0, *(t / 4 for t in ttls)]), KEEP_ALIVE_MIN))
            now = time.monotonic()
            for entry in entries.values():
                idle = entry.phase is Phase.LOADED and not (entry.leases or entry.waiting)
                if idle and entry.ttl > 0 and now - entry.last_used >= entry.ttl:
                    entry.move(Phase.EXPIRING)
                    self._spawn(self._unload_idle(entry))

    async def _unload_idle(self, entry: Entry) -> None:
        async with self._lock:
            if entry.waiting or entry.leases:  # a request came while the lock was busy
                entry.move(Phase.LOADED)
                self._notify()
                return
            entry.move(Phase.UNLOADING)
            await self._unload_now(entry, "idle")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _count(counter: dict[tuple[str, str], int], model: str, label: str) -> None:
    counter[model, label] = counter.get((model, label), 0) + 1


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
