"""Bad input: the right 4xx in OpenAI's envelope, and the server keeps serving after each."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL
from tests.openapi import validate

OK = [{"role": "user", "content": "hi"}]

BAD_CHAT: list[tuple[str, Any, str | None]] = [
    ("missing messages", {"model": MODEL}, "messages"),
    ("empty messages", {"model": MODEL, "messages": []}, "messages"),
    ("messages not a list", {"model": MODEL, "messages": "hi"}, "messages"),
    ("bad role", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
     "messages[0].role"),
    ("user content null", {"model": MODEL, "messages": [{"role": "user", "content": None}]},
     "messages[0].content"),
    ("temperature string", {"model": MODEL, "messages": OK, "temperature": "hot"}, "temperature"),
    ("temperature too high", {"model": MODEL, "messages": OK, "temperature": 2.5}, "temperature"),
    ("temperature negative", {"model": MODEL, "messages": OK, "temperature": -0.1},
     "temperature"),
    ("top_p above one", {"model": MODEL, "messages": OK, "top_p": 1.5}, "top_p"),
    ("max_tokens zero", {"model": MODEL, "messages": OK, "max_tokens": 0}, "max_tokens"),
    ("max_tokens string", {"model": MODEL, "messages": OK, "max_tokens": "10"}, "max_tokens"),
    ("max_completion_tokens zero", {"model": MODEL, "messages": OK, "max_completion_tokens": 0},
     "max_completion_tokens"),
    ("presence penalty", {"model": MODEL, "messages": OK, "presence_penalty": 3},
     "presence_penalty"),
    ("frequency penalty", {"model": MODEL, "messages": OK, "frequency_penalty": -2.5},
     "frequency_penalty"),
    ("n zero", {"model": MODEL, "messages": OK, "n": 0}, "n"),
    ("seed float", {"model": MODEL, "messages": OK, "seed": 1.5}, "seed"),
    ("stop wrong type", {"model": MODEL, "messages": OK, "stop": 5}, "stop"),
    ("stream not bool", {"model": MODEL, "messages": OK, "stream": "yes"}, "stream"),
    ("image part", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages[0].content[0]"),
    ("json_schema without schema", {"model": MODEL, "messages": OK, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
    ("response_format type unknown", {"model": MODEL, "messages": OK, "response_format": {
        "type": "xml"}}, "response_format.type"),
    ("tools with json format", {"model": MODEL, "messages": OK, "response_format": {
        "type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "response_format"),
    ("model missing", {"messages": OK}, "model"),
]


def _assert_envelope(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def _still_serving(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": OK, "max_tokens": 2})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("name", "body", "param"), BAD_CHAT, ids=[b[0] for b in BAD_CHAT])
def test_bad_chat_request_is_400(http: httpx.Client, name: str, body: Any,
                                 param: str | None) -> None:
    err = _assert_envelope(http.post("/v1/chat/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error"
    _still_serving(http)


@pytest.mark.parametrize("stream", [False, True])
def test_bad_request_is_plain_400_even_when_streaming(http: httpx.Client, stream: bool) -> None:
    r = http.post("/v1/chat/completions",
                  json={"model": MODEL, "messages": OK, "max_tokens": 10**6, "stream": stream})
    err = _assert_envelope(r, 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"
    assert "8192" in err["message"] and str(10**6) in err["message"]
    _still_serving(http)


def test_prompt_longer_than_context_is_400_not_truncated(http: httpx.Client) -> None:
    long = "lorem ipsum dolor sit amet " * 2000
    r = http.post("/v1/chat/completions",
                  json={"model": MODEL, "messages": [{"role": "user", "content": long}]})
    err = _assert_envelope(r, 400)
    assert err["code"] == "context_length_exceeded"
    assert "8192" in err["message"]
    _still_serving(http)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null", b'{"model": '])
def test_malformed_json_is_400(http: httpx.Client, raw: bytes) -> None:
    r = http.post("/v1/chat/completions", content=raw,
                  headers={"content-type": "application/json"})
    _assert_envelope(r, 400)
    _still_serving(http)


def test_unknown_model_is_404_never_a_fallback(http: httpx.Client,
                                               client: openai.OpenAI) -> None:
    r = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": OK})
    err = _assert_envelope(r, 404, "model")
    assert err["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
    _still_serving(http)


def test_alias_resolves_to_the_same_model(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions",
                  json={"model": "smollm2", "messages": OK, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "smollm2"


BAD_COMPLETIONS: list[tuple[str, Any, str | None]] = [
    ("missing prompt", {"model": MODEL}, "prompt"),
    ("empty prompt list", {"model": MODEL, "prompt": []}, "prompt"),
    ("prompt wrong type", {"model": MODEL, "prompt": {"a": 1}}, "prompt"),
    ("token out of vocab", {"model": MODEL, "prompt": [10**9]}, "prompt"),
    ("logprobs too high", {"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
    ("suffix not yet", {"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
    ("echo not yet", {"model": MODEL, "prompt": "x", "echo": True}, "echo"),
    ("best_of", {"model": MODEL, "prompt": "x", "best_of": 3}, "best_of"),
    ("context", {"model": MODEL, "prompt": "x", "max_tokens": 9000}, "max_tokens"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD_COMPLETIONS,
                         ids=[b[0] for b in BAD_COMPLETIONS])
def test_bad_completion_request_is_400(http: httpx.Client, name: str, body: Any,
                                       param: str | None) -> None:
    _assert_envelope(http.post("/v1/completions", json=body), 400, param)
    _still_serving(http)


def test_unknown_route_and_method_use_the_envelope(http: httpx.Client) -> None:
    _assert_envelope(http.get("/v1/nothing-here"), 404)
    _assert_envelope(http.get("/v1/chat/completions"), 405)


def test_sdk_raises_bad_request_with_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=OK, max_tokens=100_000)
    assert info.value.code == "context_length_exceeded"
