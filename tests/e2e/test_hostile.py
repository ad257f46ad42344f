"""Hostile requests through real HTTP, against the real engine: schemas built to exhaust the
grammar engine, lone surrogates, tool messages without an id, header floods, broken and stalled
chunked bodies. Each gets a 4xx in OpenAI's envelope or a bounded answer, within seconds, and
the server's memory stays within a stated bound."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.e2e.sse import read_events
from tests.openapi import validate

RSS_BOUND = 200 * 2**20
"""What the whole hostile run may add to the server's resident memory."""

# The body from the issue that made the old converter allocate 24 GB.
ISSUE_SCHEMA = {"type": "object", "required": ["a"], "properties": {
    "a": {"type": "string", "pattern": "^(ab|cd){1,100000}$"},
    "b": {"type": "array", "minItems": 1000000000, "items": {"type": "integer"}},
    "s": {"type": "string", "minLength": 1000000000}}}


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("hostile"), "--context-length", "1024",
                       env={"LOKAL_BODY_IDLE_TIMEOUT": "2"})
    yield srv
    stop_server(srv)


def rss(server: Server) -> int:
    with open(f"/proc/{server.process.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def schema_request(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Go."}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": schema}}, **extra}


def envelope(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    error: dict[str, Any] = body["error"]
    return error


def test_the_issue_body_is_400_naming_the_item_limit(hostile: Server) -> None:
    r = httpx.post(f"{hostile.v1}/chat/completions",
                   json=schema_request(ISSUE_SCHEMA, stream=True), timeout=60)
    error = envelope(r, 400)
    assert "'minItems' is 1000000000" in error["message"] and "100000" in error["message"]


def test_the_rest_of_the_issue_body_gets_a_bounded_answer_in_seconds(hostile: Server) -> None:
    """The 100,000-fold regex and the billion-character string: built lazily, bounded by
    max_tokens."""
    rest = {**ISSUE_SCHEMA, "properties": {k: v for k, v in ISSUE_SCHEMA["properties"].items()
                                           if k != "b"}}
    before = rss(hostile)
    started = time.monotonic()
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{hostile.v1}/chat/completions",
            json=schema_request(rest, stream=True)) as r:
        assert r.status_code == 200
        events, _ = read_events(r)
    assert time.monotonic() - started < 30
    assert not any("error" in e for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e["choices"])
    assert text.lstrip().startswith("{")
    assert rss(hostile) - before < RSS_BOUND


@pytest.mark.parametrize(("name", "schema", "code", "words"), [
    ("deep nesting", nested(60), "schema_too_deep", "48 levels"),
    ("huge enum", {"enum": [f"value-{i}" for i in range(20000)]}, "schema_too_large", "65536"),
    ("$ref cycle", {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                    "$ref": "#/$defs/a"}, "invalid_value", "cannot be enforced"),
    ("false schema", {"type": "object", "properties": {"x": False}, "required": ["x"]},
     "invalid_value", "cannot be enforced"),
])
def test_schemas_over_a_limit_or_unsatisfiable_are_400_naming_why(
        hostile: Server, name: str, schema: Any, code: str, words: str) -> None:
    started = time.monotonic()
    r = httpx.post(f"{hostile.v1}/chat/completions", json=schema_request(schema), timeout=60)
    error = envelope(r, 400)
    assert time.monotonic() - started < 10, name
    assert error["code"] == code and words in error["message"], error
    assert error["param"] == "response_format"


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a|aa)+(a+)+b$"}}},
    {"enum": [f"v{i:04d}" for i in range(3000)]},  # under the size limit: compiled, bounded
    {"type": "array", "items": {"type": "string", "pattern": "^([a-z]+)*[0-9]{1,999}$"},
     "minItems": 100000},  # at the item limit: allowed
])
def test_heavy_but_legal_schemas_answer_within_seconds(hostile: Server, schema: Any) -> None:
    before = rss(hostile)
    started = time.monotonic()
    r = httpx.post(f"{hostile.v1}/chat/completions", json=schema_request(schema), timeout=60)
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 30
    assert rss(hostile) - before < RSS_BOUND


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model":"M","messages":[{"role":"user","content":"a\\ud800b"}]}',
     "messages[0].content"),
    (b'{"model":"M","messages":[{"role":"user","content":"x"}],"user":"\\udc00"}', "user"),
    (b'{"model":"M","messages":[{"role":"user","content":"x","name":"ok"}],'
     b'"metadata":{"k\\ud83d":"v"}}', "metadata.'k"),
])
def test_a_lone_surrogate_anywhere_is_400(hostile: Server, raw: bytes, param: str) -> None:
    r = httpx.post(f"{hostile.v1}/chat/completions",
                   content=raw.replace(b'"M"', b'"' + MODEL.encode() + b'"'),
                   headers={"content-type": "application/json"})
    error = envelope(r, 400)
    assert error["param"].startswith(param) and "surrogate" in error["message"]


def test_a_surrogate_pair_is_ordinary_text(hostile: Server) -> None:
    raw = json.dumps({"model": MODEL, "max_tokens": 2, "messages": [
        {"role": "user", "content": "smile \ud83d\ude00"}]}, ensure_ascii=True).encode()
    assert b"\\ud83d\\ude00" in raw
    r = httpx.post(f"{hostile.v1}/chat/completions", content=raw,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text


def test_a_tool_message_without_tool_call_id_is_400(hostile: Server) -> None:
    r = httpx.post(f"{hostile.v1}/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type":
         "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny"}]})
    error = envelope(r, 400)
    assert error["param"] == "messages[2].tool_call_id"
    assert error["code"] == "missing_required_parameter"


def raw_exchange(server: Server, request: bytes, wait: float = 10) -> tuple[float, bytes]:
    """Send raw bytes; return (seconds until the server answered or closed, what it sent)."""
    port = int(server.base_url.rsplit(":", 1)[1])
    started = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait)
        sock.sendall(request)
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise AssertionError(f"no answer within {wait} s: {data[:200]!r}") from None
    return time.monotonic() - started, data


@pytest.mark.parametrize(("headers", "code"), [
    ("".join(f"X-H{i}: v\r\n" for i in range(5000)), "too_many_headers"),
    ("X-Big: " + "a" * 100_000 + "\r\n", "headers_too_large"),
])
def test_header_floods_are_431(hostile: Server, headers: str, code: str) -> None:
    took, data = raw_exchange(hostile, f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
                              .encode())
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert took < 5


CHUNKED = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("size_line", [b"F" * 20, b"F" * 40, b"zz", b"1" * 5000])
def test_an_overflowing_or_malformed_chunk_size_is_400_at_once(
        hostile: Server, size_line: bytes) -> None:
    took, data = raw_exchange(hostile, CHUNKED + size_line + b"\r\n" + b'{"a":1}')
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert took < 2


def test_a_stalled_body_is_408_after_the_idle_timeout(hostile: Server) -> None:
    took, data = raw_exchange(hostile, CHUNKED + b"FFFFFFFF\r\n" + b'{"model":', wait=15)
    assert data.startswith(b"HTTP/1.1 408"), data[:300]
    assert 1.5 < took < 8
    body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    assert b"request_timeout" in body or not body  # the envelope may arrive after the headers
