"""Wire models of /v1/embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from lokal.server.protocol.common import WIRE_CONFIG

# One text, several texts, one token array or several token arrays, as OpenAI's API. Lengths
# are checked when translating, with OpenAI's messages.
EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingCreateRequest(BaseModel):
    model_config = WIRE_CONFIG

    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _one_of_the_input_shapes(cls, value: Any,
                                 handler: ValidatorFunctionWrapHandler) -> EmbeddingInput:
        # Without this, pydantic reports only the union's first member ("a valid string").
        try:
            parsed: EmbeddingInput = handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "input_shape", "expected a string, an array of strings, an array of integers "
                "(token ids) or an array of arrays of integers") from None
        return parsed


class Embedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str
    """Floats, or with encoding_format=base64 the little-endian float32 bytes in base64."""


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(TypedDict):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
