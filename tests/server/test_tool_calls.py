"""Tool-call text -> OpenAI tool calls: blocks, bare JSON, and forced lists cut by max_tokens."""

from __future__ import annotations

import json

from server.tool_calls import ToolCallStream, parse_tool_calls

KNOWN = frozenset({"get_weather", "get_time"})
ONE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TWO = '{"name": "get_time", "arguments": {"tz": "CET"}}'


def names(calls: list[dict[str, object]] | None) -> list[object]:
    return [c["function"]["name"] for c in calls or []]  # type: ignore[index]


def test_a_complete_list_and_a_block_parse() -> None:
    assert names(parse_tool_calls(f"[{ONE}, {TWO}]", KNOWN)) == ["get_weather", "get_time"]
    assert names(parse_tool_calls(f"<tool_call>{ONE}</tool_call>", KNOWN)) == ["get_weather"]


def test_a_list_cut_short_keeps_the_complete_calls_only_when_cut() -> None:
    cut = f'[{ONE}, {TWO}, {{"name": "get_wea'
    assert parse_tool_calls(cut, KNOWN) is None
    calls = parse_tool_calls(cut, KNOWN, partial=True)
    assert names(calls) == ["get_weather", "get_time"]
    assert calls is not None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_tool_calls('[{"name": "get_wea', KNOWN, partial=True) is None


def test_an_unknown_function_in_a_cut_list_is_no_call() -> None:
    assert parse_tool_calls(f'[{{"name": "rm_rf", "arguments": {{}}}}, {ONE[:9]}', KNOWN,
                            partial=True) is None


def test_the_stream_returns_cut_forced_calls_and_no_content() -> None:
    stream = ToolCallStream(KNOWN, forced=True)
    assert stream.feed(f"[{ONE}, ") == "" and stream.feed('{"name": "get_') == ""
    tail, calls = stream.finish(cut=True)
    assert tail == "" and names(calls) == ["get_weather"]


def test_unforced_text_cut_short_stays_text() -> None:
    stream = ToolCallStream(KNOWN, forced=False)
    shown = stream.feed("The weather is")
    tail, calls = stream.finish(cut=True)
    assert calls == [] and shown + tail == "The weather is"
