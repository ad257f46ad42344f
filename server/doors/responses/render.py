"""OpenAI's Responses API: the Response object, and its typed SSE events with `event:` names
and one rising sequence_number (created, in_progress, output items and content parts with
their deltas, then completed, incomplete or failed). A finished response is handed to `save`."""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.render import Start
from lokal.server.doors.responses.translate import Item, new_id
from lokal.server.errors import APIError
from lokal.server.streaming import Frame

Save = Callable[[dict[str, Any]], Awaitable[None]]

# ResponseErrorCode has no client-fault or timeout codes: those are the closest it offers.
_ERROR_CODES = {400: "invalid_prompt", 429: "rate_limit_exceeded"}


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    id: str
    created_at: int
    model: str
    echo: dict[str, Any]
    """The request's settings the Response repeats (server.responses.echo)."""


def usage_wire(finish: Finish | None) -> dict[str, Any] | None:
    if finish is None or finish.usage is None:
        return None
    u = finish.usage
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


@dataclass
class ResponsesRenderer:
    """One response. Output items open as the model starts them: a message on its first
    text, a function_call on each call; each is closed (its `.done` events) when the next
    kind starts or the choice finishes."""

    meta: ResponseMeta
    save: Save | None = None
    framing: Literal["sse", "ndjson"] = "sse"
    ping: Frame | None = None
    sequence: int = 0
    output: list[Item] = field(default_factory=list)
    message: int | None = None
    """The output index of the message being written, if one is open."""
    calls: dict[int, int] = field(default_factory=dict)
    """Open function calls: the choice's call number -> output index."""
    finish: Finish | None = None

    def _frame(self, kind: str, **fields: Any) -> Frame:
        data = {"type": kind, "sequence_number": self.sequence, **copy.deepcopy(fields)}
        self.sequence += 1
        return Frame(data, event=kind)

    def response(self, status: str, error: dict[str, str] | None = None) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        response = {
            "id": self.meta.id, "object": "response", "created_at": self.meta.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error, "incomplete_details": incomplete, "model": self.meta.model,
            "output": copy.deepcopy(self.output), **self.meta.echo,
        }
        usage = usage_wire(self.finish)
        if usage is not None:  # the spec's usage is never null: absent until known
            response["usage"] = usage
        return response

    def started(self, start: Start) -> None:
        """Nothing to take: usage comes with the last chunk."""

    def head(self) -> list[Frame]:
        return [self._frame("response.created", response=self.response("in_progress")),
                self._frame("response.in_progress", response=self.response("in_progress"))]

    def event(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            frames = self._open_message() if self.message is None else []
            assert self.message is not None
            item = self.output[self.message]
            item["content"][0]["text"] += event.text
            return [*frames, self._frame("response.output_text.delta", item_id=item["id"],
                                         output_index=self.message, content_index=0,
                                         delta=event.text, logprobs=[])]
        if isinstance(event, ToolCallStart):
            frames = self._close_message("completed")
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                    "arguments": "", "call_id": event.id, "name": event.name}
            self.calls[event.call] = len(self.output)
            self.output.append(item)
            return [*frames, self._frame("response.output_item.added",
                                         output_index=self.calls[event.call], item=item)]
        if isinstance(event, ToolCallDelta):
            index = self.calls[event.call]
            self.output[index]["arguments"] += event.arguments
            return [self._frame("response.function_call_arguments.delta",
                                item_id=self.output[index]["id"], output_index=index,
                                delta=event.arguments)]
        if isinstance(event, Finish):
            self.finish = event
            cut = event.reason == "length"
            frames = self._close_message("incomplete" if cut else "completed")
            complete = {call.id: call for call in event.calls}
            for index in self.calls.values():
                item = self.output[index]
                call = complete.get(item["call_id"])
                item["status"] = "completed" if call is not None else "incomplete"
                if call is not None:
                    item["arguments"] = call.arguments
                frames += [self._frame("response.function_call_arguments.done",
                                       item_id=item["id"], name=item["name"],
                                       output_index=index, arguments=item["arguments"]),
                           self._frame("response.output_item.done", output_index=index,
                                       item=item)]
            self.calls.clear()
            if not self.output:  # an empty answer is still an (empty) message
                frames += self._open_message()
                frames += self._close_message("incomplete" if cut else "completed")
            return frames
        return []

    def _open_message(self) -> list[Frame]:
        item: Item = {"id": new_id("msg"), "type": "message", "role": "assistant",
                      "status": "in_progress", "content": []}
        self.message = len(self.output)
        self.output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        frames = [self._frame("response.output_item.added", output_index=self.message,
                              item=item),
                  self._frame("response.content_part.added", item_id=item["id"],
                              output_index=self.message, content_index=0, part=part)]
        item["content"].append(part)
        return frames

    def _close_message(self, status: str) -> list[Frame]:
        if self.message is None:
            return []
        index, self.message = self.message, None
        item = self.output[index]
        item["status"] = status
        part = item["content"][0]
        return [self._frame("response.output_text.done", item_id=item["id"],
                            output_index=index, content_index=0, text=part["text"],
                            logprobs=[]),
                self._frame("response.content_part.done", item_id=item["id"],
                            output_index=index, content_index=0, part=part),
                self._frame("response.output_item.done", output_index=index, item=item)]

    async def finished(self) -> dict[str, Any]:
        """The final Response, saved (when the request asked to store it)."""
        cut = self.finish is not None and self.finish.reason == "length"
        response = self.response("incomplete" if cut else "completed")
        if self.save is not None:
            await self.save(response)
        return response

    async def tail(self) -> list[Frame]:
        response = await self.finished()
        return [self._frame(f"response.{response['status']}", response=response)]

    def failure(self, error: APIError) -> list[Frame]:
        for item in self.output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        code = _ERROR_CODES.get(error.status, "server_error")
        return [self._frame("response.failed", response=self.response(
            "failed", {"code": code, "message": error.message}))]

    async def body(self, events: Sequence[OutputEvent]) -> dict[str, Any]:
        for event in events:
            self.event(event)
        return await self.finished()
