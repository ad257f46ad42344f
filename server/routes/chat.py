"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from lokal.server.deps import PoolDep, RequestIdDep, SettingsDep
from lokal.server.generation import serve_generation
from lokal.server.limits import reject_lone_surrogates
from lokal.server.protocol.chat import ChatCompletionRequest
from lokal.server.renderers.openai import ChatRenderer, StreamMeta
from lokal.server.translate import chat_request, chat_tools

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, pool: PoolDep, request_id: RequestIdDep,
    settings: SettingsDep,
) -> Response:
    generation = chat_request(body, request_id, settings.schema_limits())
    meta = StreamMeta.of("chatcmpl", body, request_id, generation.n,
                         logprobs=generation.logprobs is not None)
    return await serve_generation(request, pool, body.model, [generation],
                                  ChatRenderer(meta, generation.n), stream=bool(body.stream),
                                  tools=chat_tools(body))
