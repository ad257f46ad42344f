"""Wire embedding requests -> engine-neutral EmbeddingRequests; vectors -> the wire response
(floats, or OpenAI's base64 of little-endian float32)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

from lokal.backends.base import EmbeddingRequest, EmbeddingResult, TextPrompt, TokenPrompt
from lokal.server.errors import APIError
from lokal.server.protocol.embeddings import CreateEmbeddingResponse, EmbeddingCreateRequest

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request


def embedding_request(body: EmbeddingCreateRequest, request_id: str) -> EmbeddingRequest:
    raw = body.input
    if isinstance(raw, list):
        if not raw:
            raise APIError(400, "Invalid 'input': empty array. Expected an array with minimum "
                           "length 1.", param="input", code="empty_array")
        if len(raw) > MAX_INPUTS and not isinstance(raw[0], int):
            raise APIError(400, f"Invalid 'input': array too long. Expected an array with "
                           f"maximum length {MAX_INPUTS}, but got an array with length "
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
