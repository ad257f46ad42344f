"""Run a non-streaming handler's work, cancelling it when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from lokal.server.errors import APIError

T = TypeVar("T")

POLL_SECONDS = 0.1


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(POLL_SECONDS)
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            # nginx's convention: 499, the client closed the request. Nobody reads it.
            raise APIError(499, "client closed the request", code="client_closed") from None
        raise
    finally:
        watcher.cancel()
