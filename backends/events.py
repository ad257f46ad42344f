"""Engine-neutral output events: one generation's chunks as text deltas, tool-call deltas, a
finish with usage per choice, and a failure, which every protocol's renderer consumes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from lokal.backends.base import Chunk, FinishReason, TokenLogprob, ToolCall, Usage
from lokal.backends.tool_calls import CallStart, Event, ToolCallParser


@dataclass(frozen=True, slots=True)
class TextDelta:
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    """One entry per token sampled for this delta, when the request asked for logprobs."""


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call's name is known (`call` counts the choice's calls from 0)."""

    choice: int
    call: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """The next piece of a call's arguments; the pieces concatenate to its JSON text."""

    choice: int
    call: int
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    """A choice ended. `reason` is "tool_calls" when it made calls and was not cut;
    `calls` holds the complete ones (one cut by max_tokens is not among them)."""

    choice: int
    reason: FinishReason
    usage: Usage | None
    calls: tuple[ToolCall, ...] = ()
    stop_sequence: str | None = None
    """The request's stop string that ended the choice, if one did."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The generation failed after it had started; nothing follows."""

    error: Exception


OutputEvent = TextDelta | ToolCallStart | ToolCallDelta | Finish | Failure


async def output_events(
    chunks: AsyncGenerator[Chunk, None],
    parser: Callable[[], ToolCallParser] | None = None,
) -> AsyncGenerator[OutputEvent, None]:
    """`chunks` as events. With `parser` (the request offered tools), each choice's text goes
    through its own tool-call parser; a chunk's logprobs ride on its first text delta (an empty
    one when the chunk held only call text). A failure ends the events with Failure."""
    parsers: dict[int, ToolCallParser] = {}
    calls_made: dict[int, int] = {}

    def converted(i: int, events: list[Event]) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        for event in events:
            if isinstance(event, str):
                out.append(TextDelta(i, event))
            elif isinstance(event, CallStart):
                calls_made[i] = calls_made.get(i, 0) + 1
                out.append(ToolCallStart(i, event.index, event.id, event.name))
            else:
                out.append(ToolCallDelta(i, event.index, event.text))
        return out

    try:
        async for chunk in chunks:
            i = chunk.index
            if parser is None:
                if chunk.text or chunk.logprobs:
                    yield TextDelta(i, chunk.text, chunk.logprobs)
                if chunk.finish_reason is not None:
                    yield Finish(i, chunk.finish_reason, chunk.usage,
                                 stop_sequence=chunk.stop_sequence)
                continue
            choice_parser = parsers.get(i)
            if choice_parser is None:
                choice_parser = parsers[i] = parser()
            events = converted(i, choice_parser.feed(chunk.text))
            if chunk.logprobs:
                if events and isinstance(events[0], TextDelta):
                    events[0] = TextDelta(i, events[0].text, chunk.logprobs)
                else:
                    events.insert(0, TextDelta(i, "", chunk.logprobs))
            for event in events:
                yield event
            if chunk.finish_reason is None:
                continue
            tail, calls = choice_parser.finish(cut=chunk.finish_reason == "length")
            for event in converted(i, tail):
                yield event
            reason: FinishReason = chunk.finish_reason
            if calls_made.get(i) and reason != "length":  # cut calls stay "length"
                reason = "tool_calls"
            yield Finish(i, reason, chunk.usage, tuple(calls), chunk.stop_sequence)
    except Exception as exc:
        yield Failure(exc)
    finally:
        await chunks.aclose()


async def drain(events: AsyncIterator[OutputEvent]) -> list[OutputEvent]:
    """Every event, raising the failure if there was one (for non-streaming responses)."""
    out: list[OutputEvent] = []
    async for event in events:
        if isinstance(event, Failure):
            raise event.error
        out.append(event)
    return out
