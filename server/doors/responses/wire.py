"""Wire models of OpenAI's Responses API (/v1/responses): the create request and its input
items, tools, tool choice and text format. Response objects are plain dicts (renderers)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from lokal.server.doors.wire import WIRE_CONFIG, Temperature, TopP

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]


class ContentPart(BaseModel):
    """A part of an input item's content. Only text parts (`input_text`, `output_text`) are
    read; any other type is refused by the translation, by name."""

    model_config = WIRE_CONFIG

    type: str
    text: str | None = None


class InputItem(BaseModel):
    """One item of `input`: a message (`type` "message" or absent), a `function_call` or a
    `function_call_output`. The fields each kind needs are checked by the translation, which
    names the item in its errors."""

    model_config = WIRE_CONFIG

    type: str | None = None
    id: str | None = None
    role: str | None = None
    content: str | list[ContentPart] | None = None
    status: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


class Tool(BaseModel):
    """A tool in the Responses API's flat shape; only `function` tools can be served."""

    model_config = WIRE_CONFIG

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(BaseModel):
    model_config = WIRE_CONFIG

    type: str
    name: str | None = None


class TextFormat(BaseModel):
    model_config = WIRE_CONFIG

    type: Literal["text", "json_object", "json_schema"]
    name: Name | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = WIRE_CONFIG

    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(BaseModel):
    model_config = WIRE_CONFIG

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class StreamOptions(BaseModel):
    model_config = WIRE_CONFIG

    include_obfuscation: bool | None = None


Metadata = Annotated[dict[Annotated[str, Field(max_length=64)],
                          Annotated[str, Field(max_length=512)]], Field(max_length=16)]


class CreateResponse(BaseModel):
    model_config = WIRE_CONFIG

    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Temperature = None
    top_p: TopP = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: Metadata | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    max_tool_calls: Annotated[int | None, Field(ge=1)] = None
    # What lokal refuses unless absent or at the value that asks for nothing
    # (server/responses.py says why, per field).
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    background: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    context_management: list[Any] | None = None
