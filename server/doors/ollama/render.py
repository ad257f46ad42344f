"""Ollama's /api/chat and /api/generate responses: NDJSON chunks ending in one with
done: true, done_reason and Ollama's timings (nanoseconds); a failure as a last
{"error": "..."} line; tool calls with their arguments as objects."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from lokal.backends.base import ToolCall
from lokal.backends.events import Finish, OutputEvent, TextDelta
from lokal.server.doors.render import Start
from lokal.server.errors import APIError
from lokal.server.streaming import Frame


def created_at() -> str:
    """Now in RFC 3339 (UTC), as Ollama writes its timestamps."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        parsed = json.loads(call.arguments or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def tool_calls_wire(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Ollama's shape: {"function": {"name", "arguments": {...}}}, arguments an object."""
    return [{"function": {"index": i, "name": c.name, "arguments": _arguments(c)}}
            for i, c in enumerate(calls)]


@dataclass
class Timing:
    """One request's clock: `started` when it arrived (perf_counter), `load_ns` the time it
    waited for its model; the first output marks the end of prompt evaluation (streams
    only: a collected response cannot tell the two apart and reports it all as eval)."""

    started: float = field(default_factory=time.perf_counter)
    load_ns: int = 0
    first: float | None = None

    def mark_first(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def fields(self, finish: Finish | None) -> dict[str, Any]:
        now = time.perf_counter()
        total = _ns(now - self.started)
        generating = max(total - self.load_ns, 0)
        prompt_ns = min(_ns(self.first - self.started) - self.load_ns, generating) \
            if self.first is not None else 0
        usage = finish.usage if finish is not None else None
        return {"total_duration": total, "load_duration": self.load_ns,
                "prompt_eval_count": usage.prompt_tokens if usage else 0,
                "prompt_eval_duration": max(prompt_ns, 0),
                "eval_count": usage.completion_tokens if usage else 0,
                "eval_duration": max(generating - max(prompt_ns, 0), 0)}


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _reason(finish: Finish | None) -> str:
    return "length" if finish is not None and finish.reason == "length" else "stop"


@dataclass
class _OllamaRenderer:
    model: str
    timing: Timing = field(default_factory=Timing)
    framing: Literal["sse", "ndjson"] = "ndjson"
    ping: Frame | None = None
    finish: Finish | None = None

    def piece(self, text: str, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        raise NotImplementedError

    def chunk(self, payload: dict[str, Any], done: bool) -> dict[str, Any]:
        return {"model": self.model, "created_at": created_at(), **payload, "done": done}

    def last(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {**self.chunk(payload, True), "done_reason": _reason(self.finish),
                **self.timing.fields(self.finish)}

    def started(self, start: Start) -> None:
        self.timing.load_ns = _ns(max(start.leased_at - self.timing.started, 0))

    def head(self) -> list[Frame]:
        self.timing.mark_first()  # the stream starts once the first output is there
        return []

    def event(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta) and event.text:
            return [Frame(self.chunk(self.piece(event.text), False))]
        if isinstance(event, Finish):
            self.finish = event
            if event.calls:  # whole calls only: Ollama's arguments are objects
                return [Frame(self.chunk(self.piece("", event.calls), False))]
        return []

    async def tail(self) -> list[Frame]:
        return [Frame(self.last(self.piece("")))]

    def failure(self, error: APIError) -> list[Frame]:
        return [Frame({"error": error.message})]

    async def body(self, events: Sequence[OutputEvent]) -> dict[str, Any]:
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        for event in events:
            if isinstance(event, Finish):
                self.finish = event
        calls = self.finish.calls if self.finish is not None else ()
        return self.last(self.piece(text, calls))


@dataclass
class OllamaChatRenderer(_OllamaRenderer):
    """/api/chat: each chunk's `message` holds the next piece of the assistant's reply."""

    def piece(self, text: str, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = tool_calls_wire(calls)
        return {"message": message}


@dataclass
class OllamaGenerateRenderer(_OllamaRenderer):
    """/api/generate: each chunk's `response` holds the next piece of text."""

    def piece(self, text: str, calls: Sequence[ToolCall] = ()) -> dict[str, Any]:
        return {"response": text}


def ollama_envelope(err: APIError, request_id: str) -> dict[str, Any]:
    """Ollama's {"error": message}."""
    return {"error": err.message}
