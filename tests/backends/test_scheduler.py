"""The llama.cpp scheduler's batches and slot choice, on the real engine with a tiny random-weight
GGUF: what it hands to llama_decode, and which slot a request lands in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from lokal.backends.base import SamplingParams
from lokal.backends.llamacpp.scheduler import Event, Job, Scheduler
from tests.tiny_gguf import BOS, FIRST_BYTE, char_ids, tiny_backend


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    with tiny_backend(tmp_path, parallel=4) as engine:
        assert engine._scheduler is not None
        yield engine._scheduler


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


def test_a_ram_restore_never_overwrites_a_slot_whose_copy_is_pending(
        scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    # llama.cpp copies a KV stream into another at the next decode. If a request admitted in
    # the same round restored RAM-cached KV into the source slot first, the copy would carry
    # the restored cells: the copying request would continue someone else's prompt.
    p0, p2 = "zero " * 12, "two " * 15  # 60 characters each: the two long-running requests
    p1 = "one, " * 16  # 80: evicted to the RAM cache when the copying request takes its slot
    p3 = "three is a prefix here: "  # 24: the copy source
    for p in (p0, p1, p2, p3):
        run_alone(scheduler, p)
    assert [slot_of(scheduler, p) for p in (p0, p1, p2, p3)] == [0, 1, 2, 3]

    placements: list[tuple[int, int | None, bool]] = []
    real_prepare = scheduler._prepare_slot

    def recording_prepare(placement: Any) -> None:
        copy = placement.copy_from.seq_id if placement.copy_from is not None else None
        placements.append((placement.slot.seq_id, copy, placement.restore is not None))
        real_prepare(placement)

    monkeypatch.setattr(scheduler, "_prepare_slot", recording_prepare)
    busy = [Run(p0, 120), Run(p2, 120)]
    for run in busy:
        scheduler.submit(run.job)
    while not all(any(e.token_ids for e in run.events) for run in busy):
        assert not any(run.done.is_set() for run in busy)
        threading.Event().wait(0.01)
    x, y = Run(p3 + "and then more", 12), Run(p1, 12)
    with scheduler._cond:  # one admission round: x copies slot 3, y would restore p1 from RAM
        scheduler.submit(x.job)
        scheduler.submit(y.job)
    got = x.wait()
    y.wait()
    for run in busy:
        run.wait()
    assert placements[2] == (1, 3, False), placements  # x: slot 1 (between the busy ones)
    assert placements[3][0] == 3 and not placements[3][2], placements  # y: no restore into 3
    assert len(scheduler._ram) > 0  # p1 was saved, so a restore was on offer

    with scheduler._cond:  # forget every cache: what x gives computed from scratch
        llama_cpp.llama_memory_clear(scheduler._mem, True)
        for slot in scheduler._slots.slots:
            slot.tokens.clear()
        scheduler._ram = type(scheduler._ram)(0, 32)
    assert got == run_alone(scheduler, p3 + "and then more", 12)


def test_tokens_whose_text_is_held_back_still_reach_the_stream(scheduler: Scheduler) -> None:
    # The byte token 0xE2 opens a 3-byte UTF-8 character; forced over and over, each one is
    # held back until the next makes it invalid ("\ufffd"). The held token must ride along
    # with the next event (and the last ones with the finish event), not vanish: the
    # inter-token-latency metric counts the tokens it sees.
    lead = FIRST_BYTE + 0xE2
    run = Run("any prompt", 9)
    run.job.sampling = SamplingParams(temperature=0.0, logit_bias={lead: 100.0})
    scheduler.submit(run.job)
    ids = run.wait()
    finish = run.events[-1]
    assert finish.finish_reason == "length" and finish.completion_tokens == 9
    assert ids == [lead] * 9
    assert "".join(e.text for e in run.events) == "\ufffd" * 9
    texts = [e for e in run.events if e.text]
    assert len(texts[0].token_ids) == 2  # the first one waited for the second
