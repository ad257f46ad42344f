"""Ollama's renderers on scripted events: NDJSON chunks the official `ollama` client parses,
the done chunk's reason and timings, tool calls with object arguments, a failure line."""

from __future__ import annotations

import asyncio
import json

from ollama import ChatResponse, GenerateResponse

from lokal.backends.base import ToolCall, Usage
from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.ollama.render import OllamaChatRenderer, OllamaGenerateRenderer, Timing
from lokal.server.errors import APIError
from tests.server.scripted import render

TEXT: list[OutputEvent] = [TextDelta(0, "Hel"), TextDelta(0, "lo"),
                           Finish(0, "length", Usage(7, 2))]
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
CALLS: list[OutputEvent] = [ToolCallStart(0, 0, "call_1", "get_weather"),
                            ToolCallDelta(0, 0, '{"city": '), ToolCallDelta(0, 0, '"Paris"}'),
                            Finish(0, "tool_calls", Usage(9, 6), (CALL,))]
TIMINGS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def _lines(frames: list) -> list[dict]:  # type: ignore[type-arg]
    # What goes on the wire: each frame one JSON line.
    return [json.loads(json.dumps(f.data)) for f in frames]


def test_chat_stream_is_chunks_then_one_done_chunk() -> None:
    lines = _lines(asyncio.run(render(OllamaChatRenderer("m:latest"), TEXT)))
    parsed = [ChatResponse.model_validate(line) for line in lines]
    assert [p.done for p in parsed] == [False, False, True]
    assert "".join(p.message.content or "" for p in parsed) == "Hello"
    assert all(p.model == "m:latest" and p.message.role == "assistant" for p in parsed)
    last = lines[-1]
    assert last["done_reason"] == "length"
    assert (last["prompt_eval_count"], last["eval_count"]) == (7, 2)
    assert all(isinstance(last[k], int) and last[k] >= 0 for k in TIMINGS)
    assert last["total_duration"] >= last["load_duration"]
    assert "done_reason" not in lines[0]


def test_generate_body_collects_the_response() -> None:
    body = asyncio.run(OllamaGenerateRenderer("m", Timing(load_ns=5)).body(
        [TextDelta(0, "a"), TextDelta(0, "b"), Finish(0, "stop", Usage(3, 2))]))
    parsed = GenerateResponse.model_validate(body)
    assert (parsed.response, parsed.done, parsed.done_reason) == ("ab", True, "stop")
    assert (parsed.prompt_eval_count, parsed.eval_count, parsed.load_duration) == (3, 2, 5)
    # A collected response cannot tell prompt evaluation from generation.
    assert parsed.prompt_eval_duration == 0


def test_tool_calls_come_whole_with_object_arguments() -> None:
    lines = _lines(asyncio.run(render(OllamaChatRenderer("m"), CALLS)))
    assert len(lines) == 2  # fragments are not sent: Ollama's arguments are an object
    message = ChatResponse.model_validate(lines[0]).message
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.tool_calls[0].function.arguments == {"city": "Paris"}
    assert lines[1]["done"] is True and lines[1]["done_reason"] == "stop"


def test_collected_chat_carries_the_calls() -> None:
    body = asyncio.run(OllamaChatRenderer("m").body(CALLS))
    message = ChatResponse.model_validate(body).message
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    assert body["done_reason"] == "stop"


def test_failure_mid_stream_is_a_last_error_line() -> None:
    err = APIError(500, "the engine failed (request id r1)")
    lines = _lines(asyncio.run(render(OllamaGenerateRenderer("m"), TEXT[:1], err)))
    assert lines[0]["response"] == "Hel"
    assert lines[-1] == {"error": "the engine failed (request id r1)"}
    assert all(line.get("done") is not True for line in lines)


def test_stream_timing_splits_prompt_from_eval() -> None:
    renderer = OllamaChatRenderer("m")
    renderer.head()  # the first output is there
    asyncio.run(render(renderer, TEXT))
    last = asyncio.run(renderer.tail())[0].data
    assert last["prompt_eval_duration"] + last["eval_duration"] + last["load_duration"] \
        <= last["total_duration"] + 1
