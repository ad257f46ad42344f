"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import responses, streaming
from server.deps import PoolDep, RequestIdDep
from server.generation import start as start_generation
from server.protocol.chat import ChatCompletionRequest
from server.routes.disconnect import cancel_on_disconnect
from server.translate import chat_request, chat_tools

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, pool: PoolDep, request_id: RequestIdDep
) -> Response:
    generation = chat_request(body, request_id)
    tools = chat_tools(body)
    meta = streaming.StreamMeta.of("chatcmpl", body, request_id, generation.n)
    chunks = await start_generation(request, pool, body.model, generation)
    if body.stream:
        return streaming.chat_stream(meta, chunks, generation.n, tools)
    result = await cancel_on_disconnect(
        request, responses.chat_completion(meta, chunks, generation.n, tools,
                                           logprobs=generation.logprobs is not None)
    )
    return JSONResponse(result)
