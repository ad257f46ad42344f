"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from lokal.server.deps import PoolDep, RequestIdDep
from lokal.server.embeddings import embedding_request, embedding_response
from lokal.server.limits import reject_lone_surrogates
from lokal.server.protocol.embeddings import EmbeddingCreateRequest
from lokal.server.routes.disconnect import cancel_on_disconnect

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(
    body: EmbeddingCreateRequest, request: Request, pool: PoolDep, request_id: RequestIdDep
) -> JSONResponse:
    embedding = embedding_request(body, request_id)
    async with pool.lease(body.model) as backend:
        request.state.model = backend.info.id
        result = await cancel_on_disconnect(request, backend.embed(embedding))
    return JSONResponse(embedding_response(result, body.model, body.encoding_format))
