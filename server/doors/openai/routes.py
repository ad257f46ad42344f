"""OpenAI's generating routes: POST /v1/chat/completions, /v1/completions and /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from lokal.server.deps import PoolDep, RequestIdDep, SettingsDep
from lokal.server.disconnect import cancel_on_disconnect
from lokal.server.doors.openai.embeddings import (
    EmbeddingCreateRequest,
    embedding_request,
    embedding_response,
)
from lokal.server.doors.openai.render import ChatRenderer, CompletionRenderer, StreamMeta
from lokal.server.doors.openai.translate import chat_request, completion_requests
from lokal.server.doors.openai.wire import ChatCompletionRequest, CompletionRequest
from lokal.server.generation import serve_generation
from lokal.server.limits import reject_lone_surrogates

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, pool: PoolDep, request_id: RequestIdDep,
    settings: SettingsDep,
) -> Response:
    translated = chat_request(body, request_id, settings.schema_limits())
    generation = translated.generation
    meta = StreamMeta.of("chatcmpl", body, request_id, generation.n,
                         logprobs=generation.logprobs is not None)
    return await serve_generation(request, pool, body.model, [generation],
                                  ChatRenderer(meta, generation.n), stream=bool(body.stream))


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


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(
    body: EmbeddingCreateRequest, request: Request, pool: PoolDep, request_id: RequestIdDep
) -> JSONResponse:
    embedding = embedding_request(body, request_id)
    async with pool.lease(body.model) as backend:
        request.state.model = backend.info.id
        result = await cancel_on_disconnect(request, backend.embed(embedding))
    return JSONResponse(embedding_response(result, body.model, body.encoding_format))
