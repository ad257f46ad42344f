"""The Responses renderer on scripted events: the typed event sequence with rising sequence
numbers, text and function-call items, incomplete on a token cut, response.failed, the
collected Response and its save, each against OpenAI's spec."""

from __future__ import annotations

import asyncio
from typing import Any

from lokal.backends.base import ToolCall, Usage
from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.responses.render import ResponseMeta, ResponsesRenderer
from lokal.server.errors import APIError
from lokal.server.streaming import Frame
from tests.openapi import validate
from tests.server.scripted import render

USAGE = Usage(7, 3, cached_tokens=2)
CALL = ToolCall("call_1", "get_weather", '{"city":"Oslo"}')
TEXT: list[OutputEvent] = [TextDelta(0, "Hel"), TextDelta(0, ""), TextDelta(0, "lo"),
                           Finish(0, "stop", USAGE)]
TOOL_EVENTS: list[OutputEvent] = [
    TextDelta(0, "Let me look."), ToolCallStart(0, 0, "call_1", "get_weather"),
    ToolCallDelta(0, 0, '{"city":'), ToolCallDelta(0, 0, '"Oslo"}'),
    Finish(0, "tool_calls", USAGE, (CALL,)),
]
ECHO: dict[str, Any] = {
        "instructions": None, "max_output_tokens": None, "parallel_tool_calls": True,
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "metadata": {}, "background": False, "service_tier": "default"}
SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
}


def _renderer(saved: list[dict[str, Any]] | None = None) -> ResponsesRenderer:
    async def save(response: dict[str, Any]) -> None:
        assert saved is not None
        saved.append(response)

    return ResponsesRenderer(ResponseMeta("resp_1", 1700000000, "m", ECHO),
                             save if saved is not None else None)


def checked(frames: list[Frame]) -> list[dict[str, Any]]:
    """The events' data, each validated against its own schema and the stream union, with
    its SSE name equal to its type and sequence numbers counting up from 0."""
    data = []
    for i, frame in enumerate(frames):
        event = frame.data
        assert frame.event == event["type"]
        assert event["sequence_number"] == i
        validate(event, SCHEMAS[event["type"]])
        validate(event, "ResponseStreamEvent")
        data.append(event)
    return data


def _stream(events: list[OutputEvent], error: APIError | None = None,
            saved: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return checked(asyncio.run(render(_renderer(saved), events, error)))


def test_text_stream_is_the_typed_sequence_and_the_response_is_saved() -> None:
    saved: list[dict[str, Any]] = []
    events = _stream(TEXT, saved=saved)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert [e["delta"] for e in events if e["type"].endswith("text.delta")] == ["Hel", "lo"]
    assert events[2]["item"]["content"] == [] and events[2]["item"]["status"] == "in_progress"
    item = events[8]["item"]
    assert item["status"] == "completed" and item["content"][0]["text"] == "Hello"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["completed_at"] is not None
    assert final["output"] == [item]
    assert final["usage"] == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 2},
                              "output_tokens": 3,
                              "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 10}
    assert saved == [final]


def test_function_call_closes_the_message_and_streams_arguments() -> None:
    events = _stream(TOOL_EVENTS)
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta")  # the message closed first
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [a["output_index"] for a in added] == [0, 1]
    call = added[1]["item"]
    assert call["type"] == "function_call" and call["call_id"] == "call_1"
    assert call["arguments"] == "" and call["id"].startswith("fc_")
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(d["delta"] for d in deltas) == '{"city":"Oslo"}'
    assert all(d["item_id"] == call["id"] and d["output_index"] == 1 for d in deltas)
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"city":"Oslo"}' and done["name"] == "get_weather"
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["status"] == "completed"


def test_token_cut_is_incomplete_and_a_cut_call_is_marked() -> None:
    events = _stream([ToolCallStart(0, 0, "call_1", "f"), ToolCallDelta(0, 0, '{"a'),
                      Finish(0, "length", USAGE)])
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"
    assert final["response"]["output"][0]["arguments"] == '{"a'


def test_failure_mid_stream_is_response_failed() -> None:
    err = APIError(500, "engine failed (request id r1)", type="server_error",
                   code="internal_error")
    events = _stream([TextDelta(0, "par")], err)
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error",
                                           "message": "engine failed (request id r1)"}
    assert failed["response"]["output"][0]["status"] == "incomplete"
    timeout = _stream([], APIError(429, "busy", type="rate_limit_error"))[-1]
    assert timeout["response"]["error"]["code"] == "rate_limit_exceeded"


def test_body_collects_the_same_response_and_saves_it() -> None:
    saved: list[dict[str, Any]] = []
    body = asyncio.run(_renderer(saved).body(TOOL_EVENTS))
    validate(body, "Response")
    assert body["id"] == "resp_1" and body["object"] == "response"
    assert body["output"][0]["content"][0]["text"] == "Let me look."
    assert body["output"][1]["arguments"] == '{"city":"Oslo"}'
    assert saved == [body]
    empty = asyncio.run(_renderer().body([Finish(0, "stop", USAGE)]))
    validate(empty, "Response")
    assert empty["output"][0]["content"][0]["text"] == ""
