"""Anthropic's Messages: the Message object, and its stream of named SSE events
(message_start, ping, content_block_start/delta/stop per text or tool_use block,
message_delta with stop_reason and usage, message_stop; an `error` event on failure)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.anthropic.translate import tool_use_id
from lokal.server.doors.render import Start
from lokal.server.errors import APIError
from lokal.server.streaming import Frame


def stop_reason(finish: Finish | None) -> str:
    if finish is None:
        return "end_turn"
    if finish.reason == "length":
        return "max_tokens"
    if finish.reason == "tool_calls" and finish.calls:
        return "tool_use"
    return "stop_sequence" if finish.stop_sequence else "end_turn"


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """Anthropic's Usage: every field it requires; lokal has no prompt caching to bill, no
    server tools, no regions or tiers."""
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": None, "inference_geo": None, "output_tokens_details": None,
            "server_tool_use": None, "service_tier": None}


@dataclass
class MessagesRenderer:
    id: str
    model: str
    request_id: str
    input_tokens: int = 0
    """The prompt's size, known once the first chunk is there: message_start carries it."""
    framing: Literal["sse", "ndjson"] = "sse"
    ping: Frame | None = field(default_factory=lambda: Frame({"type": "ping"}, "ping"))
    _block: int = -1
    _open: str | None = None
    """The type of the block being streamed ("text" or "tool_use"), None between blocks."""
    _finish: Finish | None = None

    def _message(self, content: list[dict[str, Any]], finish: Finish | None,
                 done: bool) -> dict[str, Any]:
        usage = finish.usage if finish is not None else None
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content,
                "stop_reason": stop_reason(finish) if done else None,
                "stop_sequence": finish.stop_sequence if done and finish else None,
                "stop_details": None, "container": None,
                "usage": _usage(usage.prompt_tokens if usage else self.input_tokens,
                                usage.completion_tokens if usage else 0)}

    def started(self, start: Start) -> None:
        self.input_tokens = start.prompt_tokens

    def head(self) -> list[Frame]:
        start = {"type": "message_start", "message": self._message([], None, False)}
        return [Frame(start, "message_start"), Frame({"type": "ping"}, "ping")]

    def _close(self) -> list[Frame]:
        if self._open is None:
            return []
        self._open = None
        return [Frame({"type": "content_block_stop", "index": self._block},
                      "content_block_stop")]

    def _start(self, block: dict[str, Any]) -> list[Frame]:
        frames = self._close()
        self._block += 1
        self._open = block["type"]
        frames.append(Frame({"type": "content_block_start", "index": self._block,
                             "content_block": block}, "content_block_start"))
        return frames

    def _delta(self, delta: dict[str, Any]) -> Frame:
        return Frame({"type": "content_block_delta", "index": self._block, "delta": delta},
                     "content_block_delta")

    def event(self, event: OutputEvent) -> list[Frame]:
        frames: list[Frame] = []
        if isinstance(event, TextDelta) and event.text:
            if self._open != "text":
                frames += self._start({"type": "text", "text": "", "citations": None})
            frames.append(self._delta({"type": "text_delta", "text": event.text}))
        elif isinstance(event, ToolCallStart):
            frames += self._start({"type": "tool_use", "id": tool_use_id(event.id),
                                   "name": event.name, "input": {},
                                   "caller": {"type": "direct"}})
        elif isinstance(event, ToolCallDelta) and event.arguments:
            frames.append(self._delta({"type": "input_json_delta",
                                       "partial_json": event.arguments}))
        elif isinstance(event, Finish):
            self._finish = event
            frames += self._close()
        return frames

    async def tail(self) -> list[Frame]:
        finish = self._finish
        usage = finish.usage if finish is not None else None
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": stop_reason(finish),
                           "stop_sequence": finish.stop_sequence if finish else None,
                           "stop_details": None, "container": None},
                 "usage": {"output_tokens": usage.completion_tokens if usage else 0,
                           "input_tokens": usage.prompt_tokens if usage else self.input_tokens,
                           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                           "output_tokens_details": None, "server_tool_use": None}}
        return [*self._close(), Frame(delta, "message_delta"),
                Frame({"type": "message_stop"}, "message_stop")]

    def failure(self, error: APIError) -> list[Frame]:
        return [Frame(anthropic_envelope(error, self.request_id), "error")]

    async def body(self, events: Sequence[OutputEvent]) -> dict[str, Any]:
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        finish = next((e for e in events if isinstance(e, Finish)), None)
        content: list[dict[str, Any]] = \
            [{"type": "text", "text": text, "citations": None}] if text else []
        for call in finish.calls if finish is not None else ():
            try:
                arguments = json.loads(call.arguments)
            except json.JSONDecodeError:
                arguments = {}
            content.append({"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
                            "input": arguments if isinstance(arguments, dict) else {},
                            "caller": {"type": "direct"}})
        return self._message(content, finish, True)


# Anthropic's error types by status, those its OpenAPI document lists (its docs also name a
# request_too_large, which the document's ErrorResponse does not allow: 413 is a plain
# invalid_request_error here).
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                500: "api_error", 503: "overloaded_error", 504: "timeout_error"}


def anthropic_envelope(err: APIError, request_id: str) -> dict[str, Any]:
    """Anthropic's {"type": "error", "error": {type, message}, "request_id"}."""
    kind = _ERROR_TYPES.get(err.status, "api_error" if err.status >= 500
                            else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": err.message},
            "request_id": request_id}
