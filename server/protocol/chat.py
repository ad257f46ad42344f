"""Wire models of /v1/chat/completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from server.protocol.common import (
    WIRE_CONFIG,
    CompletionUsage,
    FinishReasonWire,
    MaxTokens,
    SamplingFields,
)


class ContentPart(BaseModel):
    """A part of a message's content list; only `text` parts carry anything this server reads."""

    model_config = WIRE_CONFIG

    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = WIRE_CONFIG

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = WIRE_CONFIG

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessageParam(BaseModel):
    model_config = WIRE_CONFIG

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ResponseFormat(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatCompletionMessageParam] = Field(min_length=1)
    max_completion_tokens: MaxTokens = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class ChatCompletionMessage(TypedDict):
    role: Literal["assistant"]
    content: str
    refusal: None


class Choice(TypedDict):
    index: int
    message: ChatCompletionMessage
    logprobs: None
    finish_reason: FinishReasonWire


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ChoiceDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str


class ChunkChoice(TypedDict):
    index: int
    delta: ChoiceDelta
    logprobs: None
    finish_reason: FinishReasonWire


class ChatCompletionChunk(TypedDict, total=False):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None
