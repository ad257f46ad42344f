"""serve_generation(): every generating endpoint's one path. The route validates and
translates its wire request; this leases the model, starts the engine, primes the first event
before the HTTP status, then streams the renderer's frames or returns its collected body.
The only place a route touches Backend.generate."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lokal.backends.base import Chunk, Deadline, GenerationRequest, ModelInfo
from lokal.backends.errors import EngineFailure
from lokal.backends.events import Failure, OutputEvent, drain, output_events
from lokal.backends.pool import ModelPool
from lokal.backends.pool_entry import Lease
from lokal.backends.tool_calls import call_parsers
from lokal.server.disconnect import cancel_on_disconnect
from lokal.server.doors.render import Renderer, Start
from lokal.server.errors import request_id_of, to_api_error
from lokal.server.metrics import GenerationWatch, Metrics
from lokal.server.settings import ServerSettings
from lokal.server.streaming import Frame, ndjson_line, ndjson_response, sse_event, sse_response

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def serve_generation(
    request: Request,
    pool: ModelPool,
    model: str,
    generations: Sequence[GenerationRequest],
    renderer: Renderer,
    *,
    stream: bool,
) -> Response:
    """Runs `generations` (several: one per prompt of a legacy completions request, whose
    choices are renumbered prompt by prompt) on `model` and answers in `renderer`'s protocol.
    Every generation is primed first, so a bad prompt anywhere is a plain 4xx. Tool calls are
    read as the request's tools and constraint say, in the serving model's own format."""
    primed: list[Started] = []
    try:
        for generation in generations:
            primed.append(await start(request, pool, model, generation))
    except BaseException:
        for started in primed:
            await started.close()
        raise
    info = primed[0].info
    renderer.started(primed[0].start)
    chunks = primed[0].chunks if len(primed) == 1 else _renumbered(primed, generations[0].n)
    events = output_events(chunks, call_parsers(generations[0], info.tool_format))
    if stream:
        if renderer.framing == "ndjson":
            return ndjson_response(_frames(renderer, events, request_id_of(request), ndjson_line))
        return sse_response(_frames(renderer, events, request_id_of(request), sse_event),
                            renderer.ping)
    try:
        body = await cancel_on_disconnect(request, _collect(renderer, events))
    finally:
        await events.aclose()
    return JSONResponse(body)


async def _collect(renderer: Renderer, events: AsyncIterator[OutputEvent]) -> object:
    return await renderer.body(await drain(events))


async def _frames(
    renderer: Renderer, events: AsyncGenerator[OutputEvent, None], request_id: str,
    framed: Callable[[Frame], T],
) -> AsyncIterator[T]:
    """The renderer's frames for `events`, each already `framed` for the wire (SSE or NDJSON):
    the framing happens here rather than in one more generator per chunk."""
    try:
        for frame in renderer.head():
            yield framed(frame)
        async for event in events:
            if isinstance(event, Failure):
                raise event.error
            for frame in renderer.event(event):
                yield framed(frame)
        tail = await renderer.tail()
    except Exception as exc:
        err = to_api_error(exc, request_id)
        logger.warning("request %s: stream failed mid-way: %s", request_id, err.message)
        tail = renderer.failure(err)
    finally:
        await events.aclose()
    for frame in tail:
        yield framed(frame)


@dataclass(frozen=True, slots=True)
class Started:
    """A generation whose first chunk has come: the stream (that chunk first), and the
    serving model's info."""

    chunks: AsyncGenerator[Chunk, None]
    info: ModelInfo
    lease: Lease
    start: Start

    async def close(self) -> None:
        """Stops the engine's work and releases the lease, also when nobody ever iterated
        the stream (closing a generator that never started does not run its finally)."""
        try:
            await self.chunks.aclose()
        finally:
            self.lease.release()


async def start(
    request: Request, pool: ModelPool, model: str, generation: GenerationRequest
) -> Started:
    """Leases `model` (loading it if need be), starts `generation` and waits for its first
    chunk, so that caller faults raise here, before any HTTP status; the lease is released
    when the stream closes."""
    settings: ServerSettings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    started: float = getattr(request.state, "started", None) or time.perf_counter()
    lease = await pool.acquire(model)
    leased_at = time.perf_counter()
    try:
        backend = lease.backend
        model_id = backend.info.id
        request.state.model = model_id  # the metrics middleware labels the request with it
        if settings.log_prompts:
            logger.info("prompt for %s: %r", model_id, generation.prompt)
        if settings.request_timeout > 0:  # the engine ends the request when it passes (504)
            limit = settings.request_timeout
            generation = replace(generation, deadline=Deadline(started + limit, limit))
        chunks = backend.generate(generation)
        watch = metrics.watch(model_id, started, vllm_names=backend.info.vllm_series == "lokal")
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise EngineFailure("the engine ended the stream without a result") from None
        except BaseException:
            await chunks.aclose()
            raise
        watch.chunk(first)
        served = _served(first, chunks, watch, lease)
        # A response that is never iterated (its client gone before the body was sent) never
        # runs the stream's finally: the lease goes back when the stream is collected.
        weakref.finalize(served, lease.release)
        start = Start(first.prompt_tokens or 0, leased_at)
        return Started(served, backend.info, lease, start)
    except BaseException:
        lease.release()
        raise


async def _served(first: Chunk, chunks: AsyncGenerator[Chunk, None], watch: GenerationWatch,
                  lease: Lease) -> AsyncGenerator[Chunk, None]:
    """The primed stream: its first chunk, then the rest, each shown to the metrics watch;
    closing it stops the engine's work and releases the lease. One generator for all three,
    since every chunk of every stream passes through it."""
    try:
        yield first
        async for chunk in chunks:
            watch.chunk(chunk)
            yield chunk
        watch.ended()
    finally:
        try:
            await chunks.aclose()
        finally:
            lease.release()


async def _renumbered(streams: list[Started], n: int) -> AsyncGenerator[Chunk, None]:
    """Choice i of prompt p becomes index p * n + i, as in OpenAI's API."""
    try:
        for p, stream in enumerate(streams):
            async for chunk in stream.chunks:
                yield replace(chunk, index=p * n + chunk.index) if p else chunk
    finally:
        for stream in streams:
            await stream.close()
