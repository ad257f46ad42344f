"""Per-request limits: the request body size (413) and the time a generation may take (504)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.base import Chunk
from server.errors import APIError, error_response


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} "
                    "bytes (LOKAL_MAX_BODY_BYTES).", code="request_too_large")


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses a body over `limit` bytes with 413: at once from Content-Length, or while it
    streams in (chunked uploads send none). FastAPI turns an exception raised while it reads
    the body into a 400, so the overflow is remembered here and the answer replaced."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(scope.get("state", {}).get("request_id", "unknown"))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(body_too_large(self.limit), request_id)(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to the broken read; ours goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await error_response(body_too_large(self.limit), request_id)(scope, receive, send)


def request_timeout(seconds: float) -> APIError:
    return APIError(504, f"The request took longer than this server's limit of {seconds:g} "
                    "seconds (LOKAL_REQUEST_TIMEOUT).", type="server_error", code="timeout")


async def with_deadline(
    chunks: AsyncGenerator[Chunk, None], started: float, seconds: float
) -> AsyncGenerator[Chunk, None]:
    """The engine's stream, ended with a 504 APIError once `seconds` have passed since
    `started` (time.perf_counter). Before the first chunk that is a plain 504; after it, the
    SSE layer turns it into one error event and [DONE]. Closing the engine's stream on the way
    out stops its work.

    One timer per stream, not an asyncio.timeout per chunk (that was ~10% of the event loop's
    CPU per streamed token). The timer cancels the task only while it waits for the engine; if
    it fires while the consumer holds a chunk, the next wait does not start. The task driving
    this generator can change (the route waits for the first chunk, the SSE task for the
    rest), so it is looked up at each wait."""
    loop = asyncio.get_running_loop()
    waiting: asyncio.Task[Any] | None = None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if waiting is not None:
            waiting.cancel()

    timer = loop.call_later(max(started + seconds - time.perf_counter(), 0), expire)
    try:
        while True:
            if expired:
                raise request_timeout(seconds)
            task = asyncio.current_task()
            assert task is not None
            cancelling = task.cancelling()
            waiting = task
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                # Ours only if the timer fired and no other cancellation is pending.
                if expired and task.uncancel() <= cancelling:
                    raise request_timeout(seconds) from None
                raise
            finally:
                waiting = None
            yield chunk
    finally:
        timer.cancel()
        await chunks.aclose()
