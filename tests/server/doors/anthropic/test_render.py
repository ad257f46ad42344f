"""The Anthropic Messages renderer and translation on scripted events: the exact event
sequence for text then a tool call, stop reasons, the error event, the collected Message, all
validated against Anthropic's OpenAPI document; content blocks refused in Anthropic's terms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lokal.backends.base import ChatPrompt, ToolCall, Usage
from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.anthropic.render import MessagesRenderer
from lokal.server.doors.anthropic.translate import translate
from lokal.server.doors.anthropic.wire import CreateMessageRequest
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits
from tests.openapi import validate
from tests.server.scripted import render

USAGE = Usage(11, 7)
CALL = ToolCall("call_abc", "get_weather", '{"city": "Oslo"}')
EVENTS: list[OutputEvent] = [
    TextDelta(0, "Checking."), ToolCallStart(0, 0, "call_abc", "get_weather"),
    ToolCallDelta(0, 0, '{"city": '), ToolCallDelta(0, 0, '"Oslo"}'),
    Finish(0, "tool_calls", USAGE, (CALL,)),
]


def _renderer() -> MessagesRenderer:
    return MessagesRenderer("msg_1", "m", "req_1", input_tokens=11)


def _frames(events: list[OutputEvent], error: APIError | None = None) -> list[Any]:
    return [(f.event, f.data) for f in asyncio.run(render(_renderer(), events, error))]


def test_text_then_a_tool_call_is_anthropics_event_sequence() -> None:
    frames = _frames(EVENTS)
    assert [name for name, _ in frames] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    for name, data in frames:
        assert data["type"] == name
        if name != "ping":
            validate(data, "MessageStreamEvent", vendor="anthropic")
    assert [d["index"] for n, d in frames if n.startswith("content_block")] == [0] * 3 + [1] * 4
    assert frames[5][1]["content_block"]["id"] == "toolu_abc"
    delta = frames[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == 7 and delta["usage"]["input_tokens"] == 11


@pytest.mark.parametrize(("finish", "reason"), [
    (Finish(0, "length", USAGE), "max_tokens"),
    (Finish(0, "stop", USAGE), "end_turn"),
    (Finish(0, "stop", USAGE, stop_sequence="###"), "stop_sequence"),
])
def test_stop_reasons(finish: Finish, reason: str) -> None:
    body = asyncio.run(_renderer().body([TextDelta(0, "hi"), finish]))
    validate(body, "Message", vendor="anthropic")
    assert body["stop_reason"] == reason
    assert body["stop_sequence"] == finish.stop_sequence


def test_collected_message_has_text_and_parsed_tool_input() -> None:
    body = asyncio.run(_renderer().body(EVENTS))
    validate(body, "Message", vendor="anthropic")
    assert [b["type"] for b in body["content"]] == ["text", "tool_use"]
    assert body["content"][1]["input"] == {"city": "Oslo"}
    assert body["usage"]["input_tokens"] == 11 and body["usage"]["output_tokens"] == 7


def test_a_failure_mid_stream_is_one_error_event() -> None:
    err = APIError(500, "engine failed (request id req_1)", type="server_error")
    frames = _frames([TextDelta(0, "par")], err)
    name, data = frames[-1]
    assert name == "error"
    validate(data, "ErrorResponse", vendor="anthropic")
    assert data["error"]["type"] == "api_error"


def _request(**fields: Any) -> CreateMessageRequest:
    return CreateMessageRequest.model_validate({"model": "m", "max_tokens": 8, **fields})


def test_blocks_become_chat_messages_with_tool_calls_and_results() -> None:
    body = _request(system=[{"type": "text", "text": "Be brief."}], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
            {"type": "text", "text": "Thanks; and Bergen?"}]}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "get_weather"}, stop_sequences=["###"], top_k=5)
    translated = translate(body, "r", SchemaLimits())
    prompt = translated.generation.prompt
    assert isinstance(prompt, ChatPrompt)
    assert [m.role for m in prompt.messages] == ["system", "user", "assistant", "tool", "user"]
    assert prompt.messages[2].tool_calls[0].arguments == '{"city": "Oslo"}'
    assert prompt.messages[3].tool_call_id == "toolu_1"
    assert translated.generation.constraint is not None  # the forced call is enforced
    assert translated.plan.names and translated.plan.forced
    sampling = translated.generation.sampling
    assert (sampling.stop, sampling.top_k, sampling.max_tokens) == (("###",), 5, 8)


@pytest.mark.parametrize(("fields", "says"), [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "text only"),
    ({"messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled"}},
     "budget_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "thinking": {"type": "enabled", "budget_tokens": 512}}, "greater than or equal to 1024"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000,
      "thinking": {"type": "enabled", "budget_tokens": 2000}}, "greater than `thinking"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"name": "web_search", "type": "web_search_20250305"}],
      "tool_choice": {"type": "tool", "name": "web_search"}}, "server tools, which lokal cannot"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "f"}],
      "tool_choice": {"type": "tool", "name": "g"}}, "no tool named 'g'"),
])
def test_what_cannot_be_honoured_is_a_400(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(APIError, match=says) as caught:
        translate(_request(**fields), "r", SchemaLimits())
    assert caught.value.status == 400


ASK = {"role": "user", "content": "Hi"}


def _prompt(messages: list[dict[str, Any]]) -> ChatPrompt:
    prompt = translate(_request(messages=messages), "r", SchemaLimits()).generation.prompt
    assert isinstance(prompt, ChatPrompt)
    return prompt


@pytest.mark.parametrize("prefill", ["Hello! How", [{"type": "text", "text": "Hello! "},
                                                     {"type": "text", "text": "How"}]])
def test_a_final_assistant_message_is_continued(prefill: Any) -> None:
    prompt = _prompt([ASK, {"role": "assistant", "content": prefill}])
    assert prompt.continue_final
    assert [(m.role, m.content) for m in prompt.messages] == [("user", "Hi"),
                                                              ("assistant", "Hello! How")]
    assert not _prompt([ASK]).continue_final


@pytest.mark.parametrize("empty", ["", []])
def test_an_empty_final_assistant_message_prefills_nothing(empty: Any) -> None:
    prompt = _prompt([ASK, {"role": "assistant", "content": empty}])
    assert not prompt.continue_final and [m.role for m in prompt.messages] == ["user"]


@pytest.mark.parametrize(("messages", "says"), [
    ([{"role": "user", "content": []}], "messages.0: all messages must have non-empty content"),
    ([{"role": "user", "content": ""}], "messages.0: all messages must have non-empty content"),
    ([ASK, {"role": "assistant", "content": []}, ASK],
     "messages.1: all messages must have non-empty content"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}],
     "messages.0.content.0: text content blocks must be non-empty"),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                    "content": [{"type": "text", "text": ""}]}]}],
     "text content blocks must be non-empty"),
    ([ASK, {"role": "assistant", "content": "Hello "}], "cannot end with trailing whitespace"),
    ([ASK, {"role": "assistant", "content": [{"type": "text", "text": "Hi\n"}]}],
     "cannot end with trailing whitespace"),
    ([ASK, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}],
     "tool_use blocks cannot be continued"),
])
def test_empty_content_and_unusable_prefills_are_a_400(messages: list[dict[str, Any]],
                                                       says: str) -> None:
    with pytest.raises(APIError, match=says) as caught:
        translate(_request(messages=messages), "r", SchemaLimits())
    assert caught.value.status == 400


@pytest.mark.parametrize("thinking", [
    {"type": "adaptive"}, {"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}])
def test_a_thinking_budget_is_a_ceiling_a_model_that_does_not_reason_meets(
        thinking: dict[str, Any]) -> None:
    """Claude Code sends thinking adaptive; a model that does not reason answers without
    thinking, which is within any budget: accepted, not refused."""
    body = _request(messages=[{"role": "user", "content": "hi"}], max_tokens=32000,
                    thinking=thinking)
    translated = translate(body, "r", SchemaLimits())
    assert translated.generation.sampling.max_tokens == 32000


def test_anthropics_server_tools_are_left_out_and_named() -> None:
    body = _request(messages=[{"role": "user", "content": "hi"}], tools=[
        {"name": "get_weather", "input_schema": {"type": "object"}},
        {"name": "web_search", "type": "web_search_20250305"}])
    plan = translate(body, "r", SchemaLimits()).plan
    assert [t.name for t in plan.tools] == ["get_weather"]
    assert plan.left_out == ("web_search_20250305",)
