"""output_events(): engine chunks -> text deltas, tool-call deltas, one finish per choice, and a
failure that ends the events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from lokal.backends.base import Chunk, TokenLogprob, Usage
from lokal.backends.errors import EngineFailure
from lokal.backends.events import (
    Failure,
    Finish,
    OutputEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    drain,
    output_events,
)
from lokal.backends.tool_calls import ToolCallParser

CLOSED: list[bool] = []


async def _chunks(script: Sequence[Chunk | Exception]) -> AsyncGenerator[Chunk, None]:
    try:
        for step in script:
            if isinstance(step, Exception):
                raise step
            yield step
    finally:
        CLOSED.append(True)


def _events(script: Sequence[Chunk | Exception], tools: bool = False) -> list[OutputEvent]:
    def parser() -> ToolCallParser:
        return ToolCallParser("hermes", frozenset({"get_weather"}), forced=False)

    async def run() -> list[OutputEvent]:
        return [e async for e in output_events(_chunks(script), parser if tools else None)]

    return asyncio.run(run())


def test_plain_text_and_finish_per_choice() -> None:
    usage = Usage(5, 2)
    events = _events([Chunk(0, "Hel"), Chunk(1, "Yo"), Chunk(0, "lo", finish_reason="stop",
                                                             usage=usage),
                      Chunk(1, "", finish_reason="length", usage=usage)])
    assert events == [TextDelta(0, "Hel"), TextDelta(1, "Yo"), TextDelta(0, "lo"),
                      Finish(0, "stop", usage), Finish(1, "length", usage)]


def test_tool_calls_become_start_and_argument_deltas_and_finish_tool_calls() -> None:
    text = 'Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    script = [Chunk(0, p) for p in pieces] + [Chunk(0, "", finish_reason="stop",
                                                    usage=Usage(9, 20))]
    events = _events(script, tools=True)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Sure."
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.call, s.name) for s in starts] == [(0, "get_weather")]
    args = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert args == '{"city": "Oslo"}'
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "tool_calls"
    assert [c.name for c in finish.calls] == ["get_weather"] and finish.calls[0].id == starts[0].id


def test_a_call_cut_by_the_token_limit_stays_length_with_no_complete_call() -> None:
    script = [Chunk(0, '<tool_call>{"name": "get_weather", "arguments": {"ci'),
              Chunk(0, "", finish_reason="length", usage=Usage(1, 1))]
    finish = _events(script, tools=True)[-1]
    assert isinstance(finish, Finish) and finish.reason == "length" and finish.calls == ()


def test_logprobs_ride_on_a_text_delta_even_when_the_chunk_held_only_call_text() -> None:
    lp = (TokenLogprob("x", (120,), -0.5),)
    events = _events([Chunk(0, '<tool_call>{"name": ', logprobs=lp),
                      Chunk(0, "", finish_reason="stop")], tools=True)
    assert events[0] == TextDelta(0, "", lp)
    plain = _events([Chunk(0, "hi", logprobs=lp), Chunk(0, finish_reason="stop")])
    assert plain[0] == TextDelta(0, "hi", lp)


def test_a_failure_mid_way_is_the_last_event_and_the_chunks_are_closed() -> None:
    CLOSED.clear()
    boom = EngineFailure("decode failed")
    events = _events([Chunk(0, "part"), boom, Chunk(0, "never")])
    assert events == [TextDelta(0, "part"), Failure(boom)]
    assert CLOSED == [True]


def test_drain_raises_the_failure() -> None:
    async def run() -> None:
        await drain(output_events(_chunks([Chunk(0, "a"), EngineFailure("x")])))

    with pytest.raises(EngineFailure, match="x"):
        asyncio.run(run())
