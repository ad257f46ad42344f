"""serve_generation(): every generating endpoint's one path. The route validates and
translates its wire request; this leases the model, starts the engine, primes the first event
before the HTTP status, then streams the renderer's frames or returns its collected body.
The only place a route touches Backend.generate."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lokal.backends.base import Chunk, GenerationRequest
from lokal.backends.events import Failure, OutputEvent, drain, output_events
from lokal.backends.pool import ModelPool
from lokal.backends.pool_entry import Lease
from lokal.server.errors import request_id_of, to_api_error
from lokal.server.limits import with_deadline
from lokal.server.metrics import Metrics
from lokal.server.renderers.base import Renderer
from lokal.server.routes.disconnect import cancel_on_disconnect
from lokal.server.settings import ServerSettings
from lokal.server.streaming import Frame, ndjson_response, prime, sse_response
from lokal.server.translate import ToolMode

logger = logging.getLogger(__name__)


async def serve_generation(
    request: Request,
    pool: ModelPool,
    model: str,
    generations: Sequence[GenerationRequest],
    renderer: Renderer,
    *,
    stream: bool,
    tools: ToolMode | None = None,
) -> Response:
    """Runs `generations` (several: one per prompt of a legacy completions request, whose
    choices are renumbered prompt by prompt) on `model` and answers in `renderer`'s protocol.
    Every generation is primed first, so a bad prompt anywhere is a plain 4xx."""
    primed: list[AsyncGenerator[Chunk, None]] = []
    try:
        for generation in generations:
            primed.append(await start(request, pool, model, generation))
    except BaseException:
        for chunks in primed:
            await chunks.aclose()
        raise
    chunks = primed[0] if len(primed) == 1 else _renumbered(primed, generations[0].n)
    if tools is not None:  # the model is loaded now: its own tool-call format
        tools = replace(tools, format=pool.find(model).info.tool_format)
    events = output_events(chunks, tools.parser if tools is not None else None)
    if stream:
        frames = _frames(renderer, events, request_id_of(request))
        if renderer.framing == "ndjson":
            return ndjson_response(frames)
        return sse_response(frames, renderer.ping)
    try:
        body = await cancel_on_disconnect(request, _collect(renderer, events))
    finally:
        await events.aclose()
    return JSONResponse(body)


async def _collect(renderer: Renderer, events: AsyncIterator[OutputEvent]) -> object:
    return await renderer.body(await drain(events))


async def _frames(
    renderer: Renderer, events: AsyncGenerator[OutputEvent, None], request_id: str
) -> AsyncIterator[Frame]:
    try:
        for frame in renderer.head():
            yield frame
        async for event in events:
            if isinstance(event, Failure):
                raise event.error
            for frame in renderer.event(event):
                yield frame
        tail = await renderer.tail()
    except Exception as exc:
        err = to_api_error(exc, request_id)
        logger.warning("request %s: stream failed mid-way: %s", request_id, err.message)
        tail = renderer.failure(err)
    finally:
        await events.aclose()
    for frame in tail:
        yield frame


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
        chunks = metrics.observe(backend.generate(generation), model_id, started,
                                 vllm_names=backend.info.backend == "llamacpp")
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


async def _renumbered(
    streams: list[AsyncGenerator[Chunk, None]], n: int
) -> AsyncGenerator[Chunk, None]:
    """Choice i of prompt p becomes index p * n + i, as in OpenAI's API."""
    try:
        for p, stream in enumerate(streams):
            async for chunk in stream:
                yield replace(chunk, index=p * n + chunk.index) if p else chunk
    finally:
        for stream in streams:
            await stream.aclose()
