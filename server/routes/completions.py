"""POST /v1/completions (text and IDE autocomplete)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from lokal.server.deps import PoolDep, RequestIdDep
from lokal.server.generation import serve_generation
from lokal.server.limits import reject_lone_surrogates
from lokal.server.protocol.completions import CompletionRequest
from lokal.server.renderers.openai import CompletionRenderer, StreamMeta
from lokal.server.translate import completion_requests

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, pool: PoolDep, request_id: RequestIdDep
) -> Response:
    generations = completion_requests(body, request_id)
    n = generations[0].n
    meta = StreamMeta.of("cmpl", body, request_id, n,
                         logprobs=generations[0].logprobs is not None)
    return await serve_generation(request, pool, body.model, generations,
                                  CompletionRenderer(meta, n * len(generations)),
                                  stream=bool(body.stream))
