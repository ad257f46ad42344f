"""start(): one engine generation as the routes use it: a lease on the model for as long as the
stream lives, the request's deadline and metrics applied, primed before the HTTP status. The
only place a route touches Backend.generate."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator

from fastapi import Request

from backends.base import Chunk, GenerationRequest
from backends.pool import ModelPool
from backends.pool_entry import Lease
from server.limits import with_deadline
from server.metrics import Metrics
from server.settings import ServerSettings
from server.streaming import prime

logger = logging.getLogger(__name__)


async def start(
    request: Request, pool: ModelPool, model: str, generation: GenerationRequest
) -> AsyncGenerator[Chunk, None]:
    """Leases `model` (loading it if need be), starts `generation` and waits for its first
    chunk, so that caller faults raise here; the lease is released when the stream closes."""
    settings: ServerSettings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    started: float = getattr(request.state, "started", None) or time.perf_counter()
    lease = await pool.acquire(model)
    try:
        backend = lease.backend
        model_id = backend.info.id
        request.state.model = model_id  # the metrics middleware labels the request with it
        if settings.log_prompts:
            logger.info("prompt for %s: %r", model_id, generation.prompt)
        chunks = metrics.observe(backend.generate(generation), model_id, started)
        if settings.request_timeout > 0:
            chunks = with_deadline(chunks, started, settings.request_timeout)
        return await prime(_released(chunks, lease))
    except BaseException:
        lease.release()
        raise


async def _released(
    chunks: AsyncGenerator[Chunk, None], lease: Lease
) -> AsyncGenerator[Chunk, None]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        try:
            await chunks.aclose()
        finally:
            lease.release()
