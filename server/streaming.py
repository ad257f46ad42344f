"""The only module that knows stream framing: SSE (data-only or with event names) and NDJSON,
priming a stream before the HTTP status, and letting streams finish on shutdown."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus

from lokal.backends.base import Chunk
from lokal.backends.errors import EngineFailure


@dataclass(frozen=True, slots=True)
class Frame:
    """One message of a stream: `data` is JSON-encoded unless it is a str (OpenAI's [DONE]);
    `event` names it on SSE streams that name their events (Anthropic, Responses)."""

    data: Any
    event: str | None = None


async def prime(chunks: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    """Wait for the first chunk so that caller faults surface as plain 4xx before HTTP 200."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise EngineFailure("the engine ended the stream without a result") from None
    except BaseException:
        await chunks.aclose()
        raise

    async def replay() -> AsyncGenerator[Chunk, None]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    return replay()


def dump(obj: Any) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False,
                                                       separators=(",", ":"))


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(frames: AsyncIterator[Frame], ping: Frame | None = None) -> EventSourceResponse:
    """`frames` as server-sent events; a keep-alive every 15 s (a comment, or `ping`)."""

    async def events() -> AsyncIterator[ServerSentEvent]:
        async for frame in frames:
            yield ServerSentEvent(data=dump(frame.data), event=frame.event, sep="\n")

    factory = None
    if ping is not None:
        def factory() -> ServerSentEvent:
            return ServerSentEvent(data=dump(ping.data), event=ping.event, sep="\n")

    return EventSourceResponse(events(), sep="\n", ping=15, ping_message_factory=factory,
                               headers=_HEADERS)


def ndjson_response(frames: AsyncIterator[Frame]) -> StreamingResponse:
    """`frames` as newline-delimited JSON, one object per line (Ollama's streams)."""

    async def lines() -> AsyncIterator[bytes]:
        async for frame in frames:
            yield (dump(frame.data) + "\n").encode("utf-8")

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers=_HEADERS)


def finish_streams_on_shutdown() -> None:
    """By default sse-starlette cuts every open stream when uvicorn gets SIGTERM. lokal lets
    them finish instead: uvicorn then waits for them for its graceful-shutdown timeout
    (LOKAL_SHUTDOWN_GRACE) and cancels what is left. sse-starlette keeps this switch
    process-wide; it is flipped once, by `lokal serve`."""
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
