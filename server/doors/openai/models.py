"""GET /v1/models and /v1/models/{model}; POST /v1/models/{model}/load and /unload: the
wire shapes and the routes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal, NotRequired

from fastapi import APIRouter
from typing_extensions import TypedDict

from lokal.backends.pool_entry import ModelState
from lokal.server.deps import PoolDep


class ModelCapabilities(TypedDict):
    chat: bool
    completions: bool
    tools: bool
    json_schema: bool
    logprobs: bool
    fim: bool
    embeddings: bool


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int
    backend: str
    backend_reason: str
    device: str
    capabilities: ModelCapabilities
    status: Literal["unloaded", "loading", "loaded", "unloading", "failed"]
    memory_bytes: int
    memory: Literal["estimated", "measured"]
    pinned: bool
    ttl: float
    chat_template: Literal["model", "config", "fallback"] | None
    error: NotRequired[str]


class ListModelsResponse(TypedDict):
    object: Literal["list"]
    data: list[Model]


router = APIRouter()


def _model(state: ModelState) -> Model:
    info = state.info
    model: Model = {
        "id": state.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by,
        "context_length": info.context_length,
        "backend": info.backend,
        "backend_reason": info.backend_reason,
        "device": info.device or state.device,
        "capabilities": asdict(info.capabilities),  # type: ignore[typeddict-item]
        "status": state.status.value,
        "memory_bytes": state.memory_bytes,
        "memory": "measured" if state.measured else "estimated",
        "pinned": state.pinned,
        "ttl": state.ttl,
        "chat_template": state.chat_template,
    }
    if state.error is not None:
        model["error"] = state.error
    return model


@router.get("/v1/models")
async def list_models(pool: PoolDep) -> ListModelsResponse:
    """Every configured model, loaded or not."""
    return {"object": "list", "data": [_model(state) for state in pool.states()]}


@router.post("/v1/models/{model:path}/load")
async def load_model(model: str, pool: PoolDep) -> Model:
    """Loads the model (making room as a request would) and returns it once loaded."""
    return _model(await pool.load(model))


@router.post("/v1/models/{model:path}/unload")
async def unload_model(model: str, pool: PoolDep, force: bool = False) -> Model:
    """Unloads the model once its running requests end; a pinned one only with force=true."""
    return _model(await pool.unload(model, force=force))


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, pool: PoolDep) -> Model:
    return _model(pool.find(model))
