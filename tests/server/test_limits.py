"""The per-request deadline over a chunk stream: a 504 APIError, and the stream closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from lokal.backends.base import Chunk
from lokal.server.errors import APIError
from lokal.server.limits import with_deadline


class Stream:
    """A chunk stream that yields every `gap` seconds and records being closed."""

    def __init__(self, count: int, gap: float) -> None:
        self.count, self.gap, self.closed = count, gap, False

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        try:
            for i in range(self.count):
                await asyncio.sleep(self.gap)
                yield Chunk(0, f"t{i}", (i,))
        finally:
            self.closed = True


async def _drain(chunks: AsyncGenerator[Chunk, None]) -> list[str]:
    return [c.text async for c in chunks]


def test_a_stream_within_the_deadline_passes_untouched() -> None:
    stream = Stream(3, 0)
    texts = asyncio.run(_drain(with_deadline(stream.chunks(), time.perf_counter(), 60)))
    assert texts == ["t0", "t1", "t2"]
    assert stream.closed


# The deadline below: a stream's first chunk comes well inside it even where a busy machine
# delays the event loop, and the streams that must outlast it run at least 10 s.
DEADLINE = 1.0


def test_a_stream_past_the_deadline_ends_with_a_504_and_is_closed() -> None:
    stream = Stream(1000, 0.01)
    got: list[str] = []

    async def run() -> None:
        async for chunk in with_deadline(stream.chunks(), time.perf_counter(), DEADLINE):
            got.append(chunk.text)

    with pytest.raises(APIError) as info:
        asyncio.run(run())
    assert info.value.status == 504 and info.value.code == "timeout"
    assert 0 < len(got) < 1000
    assert stream.closed


def test_a_deadline_already_past_fails_before_the_first_chunk() -> None:
    stream = Stream(5, 0.01)
    with pytest.raises(APIError):
        asyncio.run(_drain(with_deadline(stream.chunks(), time.perf_counter() - 10, 1)))
    assert stream.closed


def test_the_deadline_holds_when_another_task_takes_over_the_stream() -> None:
    # As in a streaming response: the route waits for the first chunk, the SSE task for the
    # rest.
    stream = Stream(1000, 0.01)

    async def run() -> list[str]:
        chunks = with_deadline(stream.chunks(), time.perf_counter(), DEADLINE)
        first = await anext(chunks)

        async def rest() -> list[str]:
            return [first.text, *[c.text async for c in chunks]]

        return await asyncio.create_task(rest())

    with pytest.raises(APIError) as info:
        asyncio.run(run())
    assert info.value.status == 504
    assert stream.closed


def test_a_deadline_passing_while_the_consumer_holds_a_chunk_ends_the_stream_next() -> None:
    stream = Stream(5, 0)
    got: list[str] = []

    async def run() -> None:
        async for chunk in with_deadline(stream.chunks(), time.perf_counter(), DEADLINE):
            got.append(chunk.text)
            await asyncio.sleep(DEADLINE + 0.2)  # a slow client: the deadline passes meanwhile

    with pytest.raises(APIError):
        asyncio.run(run())
    assert got == ["t0"]
    assert stream.closed


def test_a_cancellation_from_outside_is_not_turned_into_a_504() -> None:
    # A client that disconnects cancels the task; that must stay a cancellation.
    stream = Stream(1000, 0.01)

    async def run() -> None:
        task = asyncio.create_task(_drain(with_deadline(stream.chunks(), time.perf_counter(),
                                                        60)))
        await asyncio.sleep(0.05)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
    assert stream.closed
