"""The llama.cpp scheduler's batches and slot choice, on the real engine with a tiny random-weight
GGUF: what it hands to llama_decode, and which slot a request lands in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from backends.base import SamplingParams
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.scheduler import Event, Job, Scheduler
from backends.spec import ModelSpec
from tests.tiny_gguf import BOS, char_ids, write_tiny_gguf


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    spec = ModelSpec.model_validate({
        "id": "tiny", "gguf": {"path": str(path)}, "context_length": 256,
        "llamacpp": {"n_threads": 1, "parallel": 4, "n_batch": 32}})
    engine = LlamaCppBackend(spec, reason="test")
    asyncio.run(engine.start())
    assert engine._scheduler is not None
    yield engine._scheduler
    asyncio.run(engine.stop())


class Run:
    """One submitted job and what the engine sent back for it."""

    def __init__(self, prompt: str, max_tokens: int) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        self.job = Job(request_id=prompt, prompt=[BOS, *char_ids(prompt)],
                       sampling=SamplingParams(temperature=0.0), max_tokens=max_tokens,
                       seed=1, n=1, emit=self._emit)

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if event.finish_reason is not None or event.error is not None:
            self.done.set()

    def wait(self) -> list[int]:
        assert self.done.wait(30), "the engine did not finish the request"
        assert not [e.error for e in self.events if e.error]
        return [t for e in self.events for t in e.token_ids]


def run_alone(scheduler: Scheduler, prompt: str, max_tokens: int = 4) -> list[int]:
    run = Run(prompt, max_tokens)
    scheduler.submit(run.job)
    return run.wait()


def slot_of(scheduler: Scheduler, prompt: str) -> int:
    ids = [BOS, *char_ids(prompt)]
    held: Any = scheduler._slots.slots
    return next(s.seq_id for s in held if s.tokens[:len(ids)] == ids)


def test_a_batch_lists_its_sequences_in_slot_order(
        scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    # With one KV stream per slot llama.cpp cuts a batch into micro-batches of consecutive
    # sequence ids, so a batch listing slot 1 before slot 0 costs two passes, not one.
    run_alone(scheduler, "the first prompt here")
    run_alone(scheduler, "another prompt there")
    first, second = slot_of(scheduler, "the first prompt here"), \
        slot_of(scheduler, "another prompt there")
    assert first < second

    batches: list[list[int]] = []
    real_decode = llama_cpp.llama_decode

    def recording_decode(ctx: Any, batch: Any) -> int:
        batches.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return int(real_decode(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", recording_decode)
    later, earlier = Run("another prompt there", 12), Run("the first prompt here", 12)
    with scheduler._cond:  # both wait before the engine looks: arrival order is later, earlier
        scheduler.submit(later.job)
        scheduler.submit(earlier.job)
    later.wait()
    earlier.wait()

    together = [b for b in batches if {first, second} <= set(b)]
    assert together, "the two requests never shared a step"
    assert all(b == sorted(b) for b in batches), batches


def test_a_new_request_lands_next_to_the_busy_slots(scheduler: Scheduler) -> None:
    # Four prompts of one length fill slots 0-3, so no slot's cache attracts an unrelated
    # prompt more than another's; with slot 0 busy the next request goes to slot 1 (adjacent),
    # not to the least recently used slot 3.
    prompts = ["alpha prompt one", "bravo prompt two", "gamma prompt six", "delta prompt ten"]
    held: Any = scheduler._slots.slots
    for p in prompts:  # one at a time: each takes the first empty slot
        run_alone(scheduler, p)
    assert sorted(slot_of(scheduler, p) for p in prompts) == [0, 1, 2, 3]
    by_slot = {slot_of(scheduler, p): p for p in prompts}
    held[3].last_used, held[1].last_used = 1.0, 2.0  # slot 3 least recently used

    busy = Run(by_slot[0], 40)
    newcomer = Run("an unrelated request", 4)
    with scheduler._cond:
        scheduler.submit(busy.job)
        scheduler.submit(newcomer.job)
    newcomer.wait()
    busy.wait()
    assert slot_of(scheduler, by_slot[0]) == 0
    assert slot_of(scheduler, "an unrelated request") == 1
