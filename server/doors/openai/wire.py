"""Wire models of /v1/chat/completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from lokal.server.doors.wire import (
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


class JSONSchemaFormat(BaseModel):
    model_config = WIRE_CONFIG

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionDefinition(BaseModel):
    model_config = WIRE_CONFIG

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionTool(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = WIRE_CONFIG

    name: str


class NamedToolChoice(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatCompletionMessageParam] = Field(min_length=1)
    max_completion_tokens: MaxTokens = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ChatCompletionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class FunctionCallWire(TypedDict):
    name: str
    arguments: str


class ToolCallWire(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCallWire


class ChatCompletionMessage(TypedDict, total=False):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCallWire]


class _Choice(TypedDict):
    index: int
    logprobs: dict[str, Any] | None
    finish_reason: FinishReasonWire


class Choice(_Choice):
    message: ChatCompletionMessage


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
    tool_calls: list[dict[str, Any]]


class ChunkChoice(_Choice):
    delta: ChoiceDelta


class _Generated(TypedDict, total=False):
    """What every generated response or chunk carries beside its object and choices."""

    id: str
    created: int
    model: str
    usage: CompletionUsage | None


class ChatCompletionChunk(_Generated, total=False):
    object: Literal["chat.completion.chunk"]
    choices: list[ChunkChoice]


PromptWire = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptWire
    suffix: str | None = None
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1)


class CompletionChoice(_Choice):
    text: str


class Completion(_Generated, total=False):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
