"""The OpenAI renderers on scripted events: chunk shapes, tool-call deltas, the usage chunk,
[DONE] once at the end, the mid-stream error, and the collected bodies, against the spec."""

from __future__ import annotations

import asyncio
from typing import Any

from lokal.backends.base import ToolCall, Usage
from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.openai.render import ChatRenderer, CompletionRenderer, StreamMeta
from lokal.server.errors import APIError
from tests.openapi import validate
from tests.server.scripted import render

USAGE = Usage(7, 3, cached_tokens=2)
CALL = ToolCall("call_1", "get_weather", '{"city":"Oslo"}')
TOOL_EVENTS: list[OutputEvent] = [
    TextDelta(0, "Let me look."), ToolCallStart(0, 0, "call_1", "get_weather"),
    ToolCallDelta(0, 0, '{"city":'), ToolCallDelta(0, 0, '"Oslo"}'),
    Finish(0, "tool_calls", USAGE, (CALL,)),
]


def _meta(include_usage: bool = True, n: int = 1, logprobs: bool = False) -> StreamMeta:
    return StreamMeta("chatcmpl-1", 1700000000, "m", include_usage, n, logprobs)


def _frames(renderer: Any, events: list[OutputEvent],
            error: APIError | None = None) -> list[Any]:
    return [f.data for f in asyncio.run(render(renderer, events, error))]


def test_chat_stream_with_tool_calls_and_usage() -> None:
    data = _frames(ChatRenderer(_meta(), 1), TOOL_EVENTS)
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = data[:-1]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in chunks[:-1])
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]
             if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0] == {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"Oslo"}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3,
                                   "total_tokens": 10,
                                   "prompt_tokens_details": {"cached_tokens": 2}}


def test_chat_stream_failure_is_the_error_envelope_then_done() -> None:
    err = APIError(500, "engine failed (request id r1)", type="server_error",
                   code="internal_error")
    data = _frames(ChatRenderer(_meta(include_usage=False), 1), [TextDelta(0, "par")], err)
    assert data[-1] == "[DONE]"
    validate(data[-2], "ErrorResponse")
    assert data[-2]["error"]["code"] == "internal_error"
    assert "usage" not in data[0]


def test_chat_body_counts_the_prompt_once_per_prompt_and_parses_calls() -> None:
    renderer = ChatRenderer(_meta(n=2), 2)
    events: list[OutputEvent] = [TextDelta(0, "a"), TextDelta(1, "b"), Finish(0, "stop", USAGE),
                                 Finish(1, "length", USAGE)]
    body = asyncio.run(renderer.body(events))
    validate(body, "CreateChatCompletionResponse")
    assert [c["message"]["content"] for c in body["choices"]] == ["a", "b"]
    assert body["usage"]["prompt_tokens"] == 7 and body["usage"]["completion_tokens"] == 6
    tools = asyncio.run(ChatRenderer(_meta(), 1).body(TOOL_EVENTS))
    validate(tools, "CreateChatCompletionResponse")
    message = tools["choices"][0]["message"]
    assert message["content"] == "Let me look."
    assert message["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert tools["choices"][0]["finish_reason"] == "tool_calls"


def test_completion_stream_and_body() -> None:
    meta = StreamMeta("cmpl-1", 1700000000, "m", False, 1, False)
    events: list[OutputEvent] = [TextDelta(0, "def "), TextDelta(0, "f():"),
                                 Finish(0, "length", USAGE)]
    data = _frames(CompletionRenderer(meta, 1), events)
    assert data[-1] == "[DONE]"
    assert "".join(d["choices"][0]["text"] for d in data[:-1]) == "def f():"
    assert data[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in d for d in data[:-1])
    body = asyncio.run(CompletionRenderer(meta, 1).body(events))
    validate(body, "CreateCompletionResponse")
    assert body["choices"][0]["text"] == "def f():"
