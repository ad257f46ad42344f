"""Wire pieces several doors share: strict number fields, OpenAI's sampling fields (chat and
completions), usage and finish reasons."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

# Strict: "0.5" is not a number and "1" is not an integer, as in OpenAI's API.
# extra="ignore": unknown fields are accepted and ignored, as OpenAI's SDKs expect.
WIRE_CONFIG = ConfigDict(strict=True, extra="ignore")

Temperature = Annotated[float | None, Field(ge=0.0, le=2.0)]
TopP = Annotated[float | None, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int | None, Field(ge=1)]
TopK = Annotated[int | None, Field(ge=0, le=1_000_000)]
MinP = Annotated[float | None, Field(ge=0.0, le=1.0)]
RepetitionPenalty = Annotated[float | None, Field(gt=0.0, le=2.0)]
ChoiceCount = Annotated[int | None, Field(ge=1, le=128)]
Stop = str | list[str] | None


class StreamOptions(BaseModel):
    model_config = WIRE_CONFIG

    include_usage: bool | None = None


class SamplingFields(BaseModel):
    """Fields that chat and completions requests share."""

    model_config = WIRE_CONFIG

    model: str
    max_tokens: MaxTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    n: ChoiceCount = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Beyond OpenAI, as vLLM's and llama.cpp's servers accept them (clients send them in
    # extra_body); honoured by both engines, never dropped.
    top_k: TopK = None
    min_p: MinP = None
    repetition_penalty: RepetitionPenalty = None


class PromptTokensDetails(TypedDict):
    cached_tokens: int


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


FinishReasonWire = Literal["stop", "length", "tool_calls"] | None
JsonObject = dict[str, Any]
