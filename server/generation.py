"""start(): one engine generation as the routes use it, with the request's deadline and
metrics applied; the only place a route touches Backend.generate."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator

from fastapi import Request

from backends.base import Backend, Chunk, GenerationRequest
from server.limits import with_deadline
from server.metrics import Metrics
from server.settings import ServerSettings

logger = logging.getLogger(__name__)


def start(
    request: Request, backend: Backend, generation: GenerationRequest
) -> AsyncGenerator[Chunk, None]:
    settings: ServerSettings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    model = backend.info.id
    request.state.model = model  # the metrics middleware labels the request with it
    started: float = getattr(request.state, "started", None) or time.perf_counter()
    if settings.log_prompts:
        logger.info("prompt for %s: %r", model, generation.prompt)
    chunks = metrics.observe(backend.generate(generation), model, started)
    if settings.request_timeout > 0:
        chunks = with_deadline(chunks, started, settings.request_timeout)
    return chunks
