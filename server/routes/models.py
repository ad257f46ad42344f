"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from backends.base import ModelInfo
from server.deps import PoolDep
from server.protocol.models import ListModelsResponse, Model

router = APIRouter()


def _model(info: ModelInfo) -> Model:
    return {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by,
        "context_length": info.context_length,
        "backend": info.backend,
        "backend_reason": info.backend_reason,
        "device": info.device,
        "capabilities": asdict(info.capabilities),  # type: ignore[typeddict-item]
    }


@router.get("/v1/models")
async def list_models(pool: PoolDep) -> ListModelsResponse:
    return {"object": "list", "data": [_model(info) for info in pool.models()]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, pool: PoolDep) -> Model:
    return _model(pool.get(model).info)
