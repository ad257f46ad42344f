"""The spec validator the wire tests rely on: it finds every schema they name and rejects
broken bodies, so a passing wire test means the body really matches OpenAI's document."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from tests.openapi import schema_names, validate, validate_completion_chunk

TESTS = Path(__file__).resolve().parent


def _names_the_tests_validate(vendor: str) -> set[str]:
    """The schema names the tests pass to validate() for `vendor` (openai when unnamed)."""
    used: set[str] = set()
    call = re.compile(r"\bvalidate\(.*?,\s*\"([A-Z][A-Za-z]+)\"(?:,\s*vendor=\"(\w+)\")?")
    for path in TESTS.rglob("*.py"):
        if path.name != Path(__file__).name:
            used |= {name for name, given in call.findall(path.read_text())
                     if (given or "openai") == vendor}
    return used


def test_every_schema_the_tests_validate_against_is_in_the_pinned_document() -> None:
    used = _names_the_tests_validate("openai")
    assert {"ErrorResponse", "CreateChatCompletionResponse", "ListModelsResponse",
            "ResponseStreamEvent"} <= used
    assert used - schema_names("openai") == set()
    anthropic = _names_the_tests_validate("anthropic")
    assert {"ErrorResponse", "Message", "MessageStreamEvent"} <= anthropic
    assert anthropic - schema_names("anthropic") == set()


def test_a_body_with_a_wrong_type_fails_validation() -> None:
    good = {"error": {"message": "m", "type": "invalid_request_error", "param": None,
                      "code": None}}
    validate(good, "ErrorResponse")
    with pytest.raises(jsonschema.ValidationError):
        validate({"error": {**good["error"], "message": 42}}, "ErrorResponse")
    with pytest.raises(jsonschema.ValidationError):
        validate({"object": "list", "data": [{"id": 1, "object": "model", "created": 0,
                                              "owned_by": "lokal"}]}, "ListModelsResponse")


def test_a_completion_chunk_with_a_wrong_type_fails() -> None:
    chunk = {"id": "c", "object": "text_completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": None}]}
    validate_completion_chunk(chunk)
    with pytest.raises(jsonschema.ValidationError):
        validate_completion_chunk({**chunk, "created": "yesterday"})


def test_an_unknown_schema_name_is_an_error_not_a_pass() -> None:
    with pytest.raises(KeyError):
        validate({}, "NoSuchSchema")


def test_anthropic_document_validates_too() -> None:
    error = {"type": "error", "request_id": None,
             "error": {"type": "invalid_request_error", "message": "bad"}}
    validate(error, "ErrorResponse", vendor="anthropic")
    with pytest.raises(jsonschema.ValidationError):
        validate({**error, "error": {"type": "invalid_request_error", "message": 7}},
                 "ErrorResponse", vendor="anthropic")
