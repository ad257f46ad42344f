"""The only module that knows stream framing: SSE (data-only or with event names) and NDJSON,
and letting streams finish on shutdown."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus


@dataclass(frozen=True, slots=True)
class Frame:
    """One message of a stream: `data` is JSON-encoded unless it is a str (OpenAI's [DONE]);
    `event` names it on SSE streams that name their events (Anthropic, Responses)."""

    data: Any
    event: str | None = None


def dump(obj: Any) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False,
                                                       separators=(",", ":"))


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(frame: Frame) -> ServerSentEvent:
    """One frame as a server-sent event."""
    return ServerSentEvent(data=dump(frame.data), event=frame.event, sep="\n")


def ndjson_line(frame: Frame) -> bytes:
    """One frame as a line of newline-delimited JSON (Ollama's streams)."""
    return (dump(frame.data) + "\n").encode("utf-8")


def sse_response(events: AsyncIterator[ServerSentEvent],
                 ping: Frame | None = None) -> EventSourceResponse:
    """`events` (frames made sse_event()s) as a server-sent event stream; a keep-alive every
    15 s (a comment, or `ping`)."""
    factory = None
    if ping is not None:
        def factory() -> ServerSentEvent:
            return sse_event(ping)

    return EventSourceResponse(events, sep="\n", ping=15, ping_message_factory=factory,
                               headers=_HEADERS)


def ndjson_response(lines: AsyncIterator[bytes]) -> StreamingResponse:
    """`lines` (frames made ndjson_line()s) as a newline-delimited JSON stream."""
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=_HEADERS)


def finish_streams_on_shutdown() -> None:
    """By default sse-starlette cuts every open stream when uvicorn gets SIGTERM. lokal lets
    them finish instead: uvicorn then waits for them for its graceful-shutdown timeout
    (LOKAL_SHUTDOWN_GRACE) and cancels what is left. sse-starlette keeps this switch
    process-wide; it is flipped once, by `lokal serve`."""
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
