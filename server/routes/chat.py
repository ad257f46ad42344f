"""POST /v1/chat/completions."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from server import responses, streaming
from server.deps import PoolDep, RequestIdDep, SettingsDep
from server.generation import start as start_generation
from server.limits import reject_lone_surrogates
from server.protocol.chat import ChatCompletionRequest
from server.routes.disconnect import cancel_on_disconnect
from server.translate import chat_request, chat_tools

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, pool: PoolDep, request_id: RequestIdDep,
    settings: SettingsDep,
) -> Response:
    generation = chat_request(body, request_id, settings.schema_limits())
    tools = chat_tools(body)
    meta = streaming.StreamMeta.of("chatcmpl", body, request_id, generation.n)
    chunks = await start_generation(request, pool, body.model, generation)
    if tools is not None:  # the model is loaded now: its own tool-call format
        tools = replace(tools, format=pool.find(body.model).info.tool_format)
    if body.stream:
        return streaming.chat_stream(meta, chunks, generation.n, tools)
    result = await cancel_on_disconnect(
        request, responses.chat_completion(meta, chunks, generation.n, tools,
                                           logprobs=generation.logprobs is not None)
    )
    return JSONResponse(result)
