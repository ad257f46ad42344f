"""Wire shapes of /v1/models: OpenAI's Model, plus what lokal adds about each model's engine
and its place in the model pool."""

from __future__ import annotations

from typing import Literal, NotRequired

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
