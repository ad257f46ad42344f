"""Wire embedding requests -> engine-neutral EmbeddingRequests; vectors -> the wire response
(floats, or OpenAI's base64 of little-endian float32)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
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

from lokal.backends.base import EmbeddingRequest, EmbeddingResult, TextPrompt, TokenPrompt
from lokal.server.doors.translate import MAX_EMBEDDING_INPUTS
from lokal.server.doors.wire import WIRE_CONFIG
from lokal.server.errors import APIError


def embedding_request(body: EmbeddingCreateRequest, request_id: str) -> EmbeddingRequest:
    raw = body.input
    if isinstance(raw, list):
        if not raw:
            raise APIError(400, "Invalid 'input': empty array. Expected an array with minimum "
                           "length 1.", param="input", code="empty_array")
        if len(raw) > MAX_EMBEDDING_INPUTS and not isinstance(raw[0], int):
            raise APIError(400, f"Invalid 'input': array too long. Expected an array with "
                           f"maximum length {MAX_EMBEDDING_INPUTS}, but got an array with length "
                           f"{len(raw)} instead.", param="input", code="array_above_max_length")
        for i, item in enumerate(raw):
            if isinstance(item, list) and not item:
                raise APIError(400, f"Invalid 'input[{i}]': empty token array.",
                               param=f"input[{i}]", code="empty_array")
    inputs: list[TextPrompt | TokenPrompt]
    if isinstance(raw, str):
        inputs = [TextPrompt(raw)]
    elif all(isinstance(item, int) for item in raw):
        inputs = [TokenPrompt(tuple(t for t in raw if isinstance(t, int)))]
    else:
        inputs = [TextPrompt(item) if isinstance(item, str) else TokenPrompt(tuple(item))
                  for item in raw if not isinstance(item, int)]
    return EmbeddingRequest(request_id, tuple(inputs), body.dimensions)


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_response(result: EmbeddingResult, model: str,
                       encoding: str | None) -> CreateEmbeddingResponse:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i,
             "embedding": _base64(vector) if encoding == "base64" else list(vector)}
            for i, vector in enumerate(result.vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


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
