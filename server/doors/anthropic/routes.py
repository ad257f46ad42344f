"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API (Claude Code and
the Anthropic SDKs; `x-api-key` and `anthropic-version` are accepted)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from lokal.server.deps import PoolDep, RequestIdDep, SettingsDep
from lokal.server.doors.anthropic.render import MessagesRenderer
from lokal.server.doors.anthropic.translate import translate
from lokal.server.doors.anthropic.wire import CountTokensRequest, CreateMessageRequest
from lokal.server.doors.translate import left_out_header
from lokal.server.generation import serve_generation
from lokal.server.limits import reject_lone_surrogates

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/messages", response_model=None)
async def create_message(body: CreateMessageRequest, request: Request, pool: PoolDep,
                         request_id: RequestIdDep, settings: SettingsDep) -> Response:
    translated = translate(body, request_id, settings.schema_limits())
    renderer = MessagesRenderer(f"msg_{uuid.uuid4().hex[:24]}", body.model, request_id)
    response = await serve_generation(request, pool, body.model, [translated.generation],
                                      renderer, stream=bool(body.stream))
    return left_out_header(translated.plan, response, request_id)


@router.post("/v1/messages/count_tokens")
async def count_message_tokens(body: CountTokensRequest, pool: PoolDep,
                               request_id: RequestIdDep,
                               settings: SettingsDep) -> dict[str, int]:
    """The prompt's tokens as the model's chat template and tokenizer make them."""
    translated = translate(body, request_id, settings.schema_limits())
    async with pool.lease(body.model) as backend:
        return {"input_tokens": await backend.count_tokens(translated.generation)}
