"""Wire shapes of /v1/models."""

from __future__ import annotations

from typing import Literal

from typing_extensions import TypedDict


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


class ListModelsResponse(TypedDict):
    object: Literal["list"]
    data: list[Model]
