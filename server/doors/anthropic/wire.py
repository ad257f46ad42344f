"""Wire models of Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Strict types, unknown fields ignored (as Anthropic's SDKs expect of servers).
WIRE = ConfigDict(strict=True, extra="ignore")


class ContentBlock(BaseModel):
    """One block of a message's content. Only the fields of the blocks lokal reads are
    declared; any other type is refused by the translation, naming it."""

    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    text: str | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None


class MessageParam(BaseModel):
    model_config = WIRE

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolParam(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    """Absent or "custom" for a client tool; Anthropic's server tools have other types."""


class ToolChoice(BaseModel):
    model_config = WIRE

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class CountTokensRequest(BaseModel):
    model_config = WIRE

    model: str
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    system: str | list[ContentBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingParam | None = None


class CreateMessageRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    top_p: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
