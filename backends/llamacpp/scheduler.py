"""Continuous batching over llama.cpp: one thread owns the context and, each step, decodes one
batch holding every active sequence (newcomers' prompt chunks, one token per decoding one)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import llama_cpp

from lokal.backends.errors import Busy, EngineDown
from lokal.backends.llamacpp.jobs import Event, Job, Seq
from lokal.backends.llamacpp.sampling import SamplerChain
from lokal.backends.llamacpp.step import Stepper
from lokal.backends.spec import Speculation
from lokal.backends.stops import StopMatcher

__all__ = ["Event", "Job", "Scheduler"]

logger = logging.getLogger(__name__)


class Scheduler(Stepper):
    """Owns a llama.cpp context with `n_slots` sequences, each in its own KV stream: the engine
    thread, its wait queue, admission, and answering everyone when it stops or dies."""

    def __init__(self, model: Any, ctx: Any, *, n_slots: int, prompt_budget: int,
                 max_waiting: int, copy_min_gain: int, prompt_cache_bytes: int = 0,
                 speculation: Speculation | None = None,
                 deliver: Callable[[], None] | None = None) -> None:
        super().__init__(model, ctx, speculation=speculation, deliver=deliver,
                         n_slots=n_slots, prompt_budget=prompt_budget,
                         copy_min_gain=copy_min_gain, prompt_cache_bytes=prompt_cache_bytes)
        self._max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._run, name="lokal-llamacpp", daemon=True)
        self.cancelled_total = 0

    # -- called from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the engine thread after its current step; the requests it still holds are
        answered with an error. False if the thread did not end within `timeout` (then
        nothing it uses may be freed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        llama_cpp.llama_batch_free(self._batch)
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def error(self) -> str | None:
        """Why this engine can no longer serve: its thread ended without being stopped."""
        if self._dead is None and self._thread.ident is not None \
                and not self._thread.is_alive() and not self._stopping:
            return "the llama.cpp engine thread stopped"
        return self._dead

    def submit(self, job: Job) -> None:
        with self._cond:
            error = self.error
            if error is not None:
                raise EngineDown(error)
            live = sum(1 for j in self._waiting if not j.cancelled.is_set())
            if live >= self._max_waiting:
                raise Busy(f"{live} requests are already waiting for this model", retry_after=1)
            self._waiting.append(job)
            self._cond.notify()

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._active and not self._waiting:
                        self._deliver()
                        self._cond.wait()
                    if self._stopping:
                        self._die_stopped()
                        break
                try:
                    with self._cond:
                        self._admit()
                    self._drop_cancelled()
                    if self._active:
                        self._step()
                except Exception:
                    # A fault fails the requests it touched; the engine goes on serving.
                    logger.exception("llama.cpp engine fault; failing the running requests")
                    self._fail_all("llama.cpp engine fault")
        except BaseException:
            # Not re-raised: logged here, and reported by `error` (health, metrics, 503s).
            logger.critical("the llama.cpp engine thread died", exc_info=True)
            self._die("the llama.cpp engine thread died")
        finally:
            for seq in self._active:
                seq.sampler.close()
            self._deliver()

    def _admit(self) -> None:
        """Move waiting jobs into free slots, in arrival order (called with the lock held)."""
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            free = len(self._slots.free())
            if free < job.n:
                return
            self._waiting.popleft()
            try:
                self._start(job)
            except Exception:
                logger.exception("request %s: could not be started", job.request_id)
                job.emit(Event(0, error="the request could not be started"))
                for seq in [s for s in self._active if s.job is job]:
                    self._release(seq)

    def _start(self, job: Job) -> None:
        try:
            samplers = [SamplerChain(self._n_vocab, job.sampling, (job.seed + i) % 2**32)
                        for i in range(job.n)]
        except Exception as exc:
            logger.error("request %s: sampler set-up failed: %s", job.request_id, exc)
            job.emit(Event(0, error="the sampler could not be set up"))
            return
        placement = self._place(job.prompt)
        leader_slot = placement.slot
        self._prepare_slot(placement)
        self._slots.claim(leader_slot)
        self.cached_tokens_total += placement.reuse
        waited = time.monotonic() - job.enqueued_at
        for index in range(job.n):
            if index == 0:
                slot = leader_slot
            else:
                slot = self._slots.spare()
                self._slots.claim(slot)
            seq = Seq(
                job=job, index=index, slot=slot,
                sampler=samplers[index],
                matcher=job.matchers[index] if job.matchers else None,
                lazy=job.lazy[index] if job.lazy else None,
                reuse=placement.reuse, n_past=placement.reuse, prefilling=True,
                leader=index == 0,
            )
            seq.stops = StopMatcher(job.sampling.stop)
            self._active.append(seq)
            # An empty first event: the request left the queue (its wait is measured).
            job.emit(Event(index, queue_seconds=waited))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.job.cancelled.is_set()]:
            self.cancelled_total += 1
            logger.info("request %s choice %d: cancelled after %d tokens",
                        seq.job.request_id, seq.index, seq.generated)
            self._release(seq)

    def _die_stopped(self) -> None:
        """Answer everyone still waiting or running when the engine is stopped (lock held)."""
        waiting = list(self._waiting)
        self._waiting.clear()
        for job in waiting:
            job.emit(Event(0, error="the engine was stopped"))
        self._fail_all("the engine was stopped")

    def _die(self, message: str) -> None:
        """Answer everyone still waiting or running: nobody is left to serve them."""
        with self._cond:
            self._dead = message
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in waiting:
            job.emit(Event(0, error=message))
        try:
            self._fail_all(message)
        except Exception:
            logger.exception("clean-up after the engine thread died failed")

    def _fail_all(self, message: str) -> None:
        for seq in list(self._active):
            seq.job.emit(Event(seq.index, error=message))
            seq.sampler.close()
            self._slots.release(seq.slot)
        self._active.clear()
        llama_cpp.llama_memory_clear(self._mem, True)
        self._copy_sources.clear()
        for slot in self._slots.slots:
            slot.tokens.clear()
