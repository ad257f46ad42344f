"""POST /v1/completions (text and IDE autocomplete)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from backends.base import Chunk
from server import responses, streaming
from server.deps import PoolDep, RequestIdDep
from server.generation import start as start_generation
from server.limits import reject_lone_surrogates
from server.protocol.completions import CompletionRequest
from server.routes.disconnect import cancel_on_disconnect
from server.translate import completion_requests

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, pool: PoolDep, request_id: RequestIdDep
) -> Response:
    generations = completion_requests(body, request_id)
    n = generations[0].n
    meta = streaming.StreamMeta.of("cmpl", body, request_id, n)
    # Every prompt is primed before the first byte, so a bad prompt anywhere is a plain 400.
    primed: list[AsyncGenerator[Chunk, None]] = []
    try:
        for generation in generations:
            primed.append(await start_generation(request, pool, body.model, generation))
    except BaseException:
        for chunks in primed:
            await chunks.aclose()
        raise
    chunks = _renumbered(primed, n)
    if body.stream:
        return streaming.completion_stream(meta, chunks)
    result = await cancel_on_disconnect(
        request, responses.completion(meta, chunks, n * len(generations),
                                      logprobs=generations[0].logprobs is not None)
    )
    return JSONResponse(result)


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
