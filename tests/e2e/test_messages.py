"""Anthropic's Messages API on the real model through the official `anthropic` SDK and raw
SSE: bodies and every stream event validated against Anthropic's OpenAPI document; tools with
a forced tool_choice and a tool_result round trip; count_tokens; stop sequences; a prefilled
final assistant message continued; refusals and errors in Anthropic's shape; a dropped stream
frees the slot."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import CLIENT_TIMEOUT, MODEL, Server
from tests.openapi import validate

# The module's client fixture wraps the shared server: run on every engine.
pytestmark = pytest.mark.backends("llamacpp", "vllm")

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"], "additionalProperties": False}}
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
# This SDK's create() no longer takes the sampling fields the API still documents.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0,
                               timeout=CLIENT_TIMEOUT)


def _raw(server: Server, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a raw streamed response, framing checked."""
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, timeout=120,
                      headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = []
    for block in raw.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        events.append((name, data))
    return events


def test_create_validates_and_counts(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    msg = claude.messages.create(model=MODEL, max_tokens=16, messages=HELLO,
                                 system="You are terse.", extra_body=GREEDY)
    body = msg.model_dump(exclude_none=False)
    validate(json.loads(msg.model_dump_json()), "Message", vendor="anthropic")
    assert body["role"] == "assistant" and body["content"][0]["type"] == "text"
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert 0 < msg.usage.output_tokens <= 16
    count = claude.messages.count_tokens(model=MODEL, messages=HELLO, system="You are terse.")
    validate(count.model_dump(), "CountMessageTokensResponse", vendor="anthropic")
    assert count.input_tokens == msg.usage.input_tokens  # the same template, the same count


def test_stream_event_sequence(server: Server, claude: anthropic.Anthropic) -> None:
    events = _raw(server, {"model": MODEL, "max_tokens": 12, "messages": HELLO,
                           "stream": True, "temperature": 0})
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta",
                                                                      "message_stop"]
    body = [n for n in names if n != "ping"]
    assert body[1] == "content_block_start" and body[-3] == "content_block_stop"
    assert set(body[2:-3]) == {"content_block_delta"}
    for name, data in events:
        if name != "ping":
            validate(data, "MessageStreamEvent", vendor="anthropic")
    start = events[0][1]["message"]
    delta = events[-2][1]
    assert start["usage"]["input_tokens"] == delta["usage"]["input_tokens"] > 0
    assert delta["usage"]["output_tokens"] == 12 and delta["delta"]["stop_reason"] == "max_tokens"
    with claude.messages.stream(model=MODEL, max_tokens=12, messages=HELLO,
                                extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == streamed == final.content[0].text  # greedy: the same text every time


def test_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    full = claude.messages.create(model=MODEL, max_tokens=30, messages=HELLO, extra_body=GREEDY)
    text = full.content[0].text
    word = text.split()[2]
    cut = claude.messages.create(model=MODEL, max_tokens=30, messages=HELLO, extra_body=GREEDY,
                                 stop_sequences=["zzz-never", word])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == word
    assert cut.content[0].text == text[:text.index(word)]


def test_forced_tool_then_tool_result_round_trip(server: Server,
                                                 claude: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    msg = claude.messages.create(model=MODEL, max_tokens=60, messages=ask, tools=[WEATHER],
                                 tool_choice={"type": "tool", "name": "get_weather"},
                                 extra_body=GREEDY)
    validate(json.loads(msg.model_dump_json()), "Message", vendor="anthropic")
    assert msg.stop_reason == "tool_use"
    (call,) = [b for b in msg.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input["city"], str)
    assert call.id.startswith("toolu_")
    events = _raw(server, {"model": MODEL, "max_tokens": 120, "messages": ask, "stream": True,
                           "temperature": 0,
                           "tools": [WEATHER], "tool_choice": {
                               "type": "any", "disable_parallel_tool_use": True}})
    starts = [d for n, d in events if n == "content_block_start"]
    assert starts[0]["content_block"]["type"] == "tool_use"
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta")
    assert isinstance(json.loads(partial)["city"], str)
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    follow = claude.messages.create(model=MODEL, max_tokens=20, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "Sunny, 21 C"}]}])
    assert follow.content and follow.content[0].type == "text"
    assert follow.usage.input_tokens > msg.usage.input_tokens  # the result reached the model


def test_refusals_and_errors_in_anthropic_shape(server: Server,
                                                claude: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}
    cases: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": [image]}]},
        {"messages": HELLO, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"messages": HELLO, "max_tokens": None},
        {"messages": HELLO, "temperature": 1.5},
    ]
    for extra in cases:
        body = {"model": MODEL, "max_tokens": 8, **extra}
        r = httpx.post(f"{server.base_url}/v1/messages", json={
            k: v for k, v in body.items() if v is not None}, timeout=60)
        assert r.status_code == 400, (extra, r.text)
        validate(r.json(), "ErrorResponse", vendor="anthropic")
        assert r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert missing.value.status_code == 404


def test_a_final_assistant_message_is_continued(server: Server,
                                                claude: anthropic.Anthropic) -> None:
    full = claude.messages.create(model=MODEL, max_tokens=40, messages=HELLO, extra_body=GREEDY)
    text = full.content[0].text
    # Two words and no trailing whitespace: the next word's leading space is its own token's.
    words = re.match(r"\s*\S+\s+\S+", text)
    assert words, text
    prefill = words.group(0)
    ask = [*HELLO, {"role": "assistant", "content": prefill}]
    rest = claude.messages.create(model=MODEL, max_tokens=40, messages=ask, extra_body=GREEDY)
    # Greedy on the same tokens: the reply holds only what follows the prefill.
    continued = prefill + rest.content[0].text
    if full.stop_reason == "end_turn":
        assert continued == text and rest.stop_reason == "end_turn"
    else:  # the continuation had the prefill's tokens to spare
        assert continued.startswith(text)
    count = claude.messages.count_tokens(model=MODEL, messages=ask)
    assert count.input_tokens == rest.usage.input_tokens > full.usage.input_tokens
    events = _raw(server, {"model": MODEL, "max_tokens": 40, "messages": ask, "stream": True,
                           "temperature": 0})
    assert events[0][1]["message"]["usage"]["input_tokens"] == count.input_tokens
    assert "".join(d["delta"]["text"] for n, d in events
                   if n == "content_block_delta") == rest.content[0].text


def test_empty_content_and_trailing_whitespace_are_a_400(server: Server,
                                                         claude: anthropic.Anthropic) -> None:
    cases: list[tuple[list[dict[str, Any]], str]] = [
        ([{"role": "user", "content": []}], "non-empty content"),
        ([*HELLO, {"role": "assistant", "content": []}, *HELLO], "non-empty content"),
        ([{"role": "user", "content": ""}], "non-empty content"),
        ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "must be non-empty"),
        ([*HELLO, {"role": "assistant", "content": "Hello "}], "trailing whitespace"),
    ]
    for messages, says in cases:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            r = httpx.post(f"{server.base_url}{path}", timeout=60, json={
                "model": MODEL, "max_tokens": 8, "messages": messages})
            assert r.status_code == 400, (messages, r.text)
            validate(r.json(), "ErrorResponse", vendor="anthropic")
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert says in r.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="trailing whitespace"):
        claude.messages.create(model=MODEL, max_tokens=8, messages=cases[-1][0])


def test_a_dropped_stream_frees_the_slot(server: Server) -> None:
    before = server.log_text().count("cancelled after")
    body = {"model": MODEL, "max_tokens": 1500, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "text_delta" in line:
                break  # leave after the first token: the connection closes
    # A wait on the log line, with room for a busy machine (the stream is never read again,
    # so nothing here needs its 1500 tokens generated).
    deadline = time.monotonic() + 120
    while server.log_text().count("cancelled after") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_text().count("cancelled after") > before


def test_an_agents_thinking_and_output_budgets_are_ceilings(server: Server) -> None:
    """What Claude Code sends on every turn: adaptive thinking, an effort, and max_tokens
    32000 (more than this model's context). A model that does not reason answers, without
    thinking blocks, within the context."""
    r = httpx.post(f"{server.base_url}/v1/messages", timeout=CLIENT_TIMEOUT, json={
        "model": MODEL, "max_tokens": 32000, "messages": HELLO, "temperature": 0,
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "stop_sequences": ["\n"]})
    assert r.status_code == 200, r.text
    validate(r.json(), "Message", vendor="anthropic")
    assert [block["type"] for block in r.json()["content"]] == ["text"]
    assert r.json()["content"][0]["text"].strip()
