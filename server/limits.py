"""Per-request limits: the body size (413), how long a body may stall (408), the headers (431)
and lone surrogate escapes in JSON bodies (400)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.server.errors import APIError, send_error


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} "
                    "bytes (LOKAL_MAX_BODY_BYTES).", code="request_too_large")


def body_too_slow(seconds: float) -> APIError:
    return APIError(408, f"The request body stalled: no data for {seconds:g} seconds.",
                    code="request_timeout")


class _BodyRefused(Exception):
    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


class BodyLimitMiddleware:
    """Refuses a body over `limit` bytes with 413: at once from Content-Length, or while it
    streams in (chunked uploads send none); and a body that stops arriving for `idle`
    seconds with 408 (a client that declares a huge chunk and sends nothing would otherwise
    hold its connection and task forever). FastAPI turns an exception raised while it reads
    the body into a 400, so the refusal is remembered here and the answer replaced."""

    def __init__(self, app: ASGIApp, limit: int, idle: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.idle = idle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(body_too_large(self.limit), scope, receive, send)
            return

        received = 0
        refused: APIError | None = None
        started = False
        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, refused, body_done
            if body_done:  # afterwards receive() only waits for the client to go away
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle)
            except TimeoutError:
                refused = body_too_slow(self.idle)
                raise _BodyRefused(refused) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.limit:
                    refused = body_too_large(self.limit)
                    raise _BodyRefused(refused)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None:
                return  # the app's answer to the broken read; ours goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyRefused:
            pass
        if refused is not None and not started:
            await send_error(refused, scope, receive, send)


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """The JSON path of the first string (or key) in `value` holding a lone UTF-16 surrogate:
    JSON's `\\ud800` escape decodes to one, which no UTF-8 text (prompts, logs) can carry."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return path or "body"
        elif isinstance(node, dict):
            for key, child in node.items():
                if _SURROGATE.search(key):
                    return f"{path}.{key!r}" if path else repr(key)
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


async def reject_lone_surrogates(request: Request) -> None:
    """A route dependency: 400 for a JSON body with a lone surrogate escape anywhere. FastAPI
    has read the body before dependencies run, so this parses the cached bytes again."""
    body = await request.body()
    if not _SURROGATE_ESCAPE.search(body):
        return  # most bodies: no \ud800-\udfff escape, so nothing to parse again
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # FastAPI answers malformed JSON itself
    where = lone_surrogate(parsed)
    if where is not None:
        raise APIError(400, f"Invalid value for '{where}': the string holds a lone UTF-16 "
                       "surrogate (an unpaired \\ud800-\\udfff escape), which is not text.",
                       param=where, code="invalid_value")


class HeaderLimitMiddleware:
    """431 for a request with more than `limit` headers, or more than `max_bytes` of them."""

    def __init__(self, app: ASGIApp, limit: int, max_bytes: int) -> None:
        self.app = app
        self.limit = limit
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        size = sum(len(name) + len(value) for name, value in headers)
        error = None
        if len(headers) > self.limit:
            error = APIError(431, f"The request has {len(headers)} headers, more than this "
                             f"server's limit of {self.limit} (LOKAL_MAX_HEADERS).",
                             code="too_many_headers")
        elif size > self.max_bytes:
            error = APIError(431, f"The request's headers take {size} bytes, more than this "
                             f"server's limit of {self.max_bytes} (LOKAL_MAX_HEADER_BYTES).",
                             code="headers_too_large")
        if error is not None:
            await send_error(error, scope, receive, send)
            return
        await self.app(scope, receive, send)
