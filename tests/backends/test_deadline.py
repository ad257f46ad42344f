"""The request deadline an engine's stream runs under (backends/deadline.py): one timer per
request that wakes the stream's wait with DeadlineExceeded, raised again at the next check
(a deadline that passes while the consumer holds a chunk), and nothing without a deadline."""

from __future__ import annotations

import asyncio
import time

from lokal.backends.base import Deadline
from lokal.backends.deadline import DeadlineTimer
from lokal.backends.errors import DeadlineExceeded


async def _armed(deadline: Deadline | None) -> tuple[DeadlineTimer, asyncio.Queue[object]]:
    woken: asyncio.Queue[object] = asyncio.Queue()
    return DeadlineTimer(deadline, woken.put_nowait), woken


def test_the_timer_wakes_the_stream_with_the_limit_once_the_deadline_passes() -> None:
    async def run() -> tuple[object, float]:
        timer, woken = await _armed(Deadline(time.perf_counter() + 0.05, 7.0))
        assert not timer.expired
        timer.check()  # before the deadline: nothing
        started = time.perf_counter()
        error = await asyncio.wait_for(woken.get(), 30)  # the stream's wait is woken
        return error, time.perf_counter() - started

    error, waited = asyncio.run(run())
    assert isinstance(error, DeadlineExceeded) and error.seconds == 7.0
    assert waited < 29


def test_after_expiry_every_check_raises_the_deadline() -> None:
    async def run() -> DeadlineTimer:
        timer, woken = await _armed(Deadline(time.perf_counter() + 0.01, 2.0))
        await asyncio.wait_for(woken.get(), 30)
        return timer

    timer = asyncio.run(run())
    assert timer.expired
    for _ in range(2):  # the consumer held a chunk while it passed: its next wait ends it
        try:
            timer.check()
        except DeadlineExceeded as exc:
            assert exc.seconds == 2.0
        else:
            raise AssertionError("check() let a passed deadline through")


def test_a_deadline_already_past_fires_at_once() -> None:
    async def run() -> object:
        _, woken = await _armed(Deadline(time.perf_counter() - 10, 1.0))
        return await asyncio.wait_for(woken.get(), 30)

    assert isinstance(asyncio.run(run()), DeadlineExceeded)


def test_a_cancelled_timer_and_no_deadline_never_fire() -> None:
    async def run() -> tuple[bool, bool, int]:
        cancelled, woken = await _armed(Deadline(time.perf_counter() + 0.01, 1.0))
        cancelled.cancel()
        unlimited, woken_too = await _armed(None)
        await asyncio.sleep(0.1)
        unlimited.check()
        return cancelled.expired, unlimited.expired, woken.qsize() + woken_too.qsize()

    assert asyncio.run(run()) == (False, False, 0)
