"""OpenAI's chat completions and legacy completions: chunk objects over data-only SSE ending
in [DONE], usage chunks on request, the error envelope as a mid-stream event."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.backends.base import TokenLogprob
from lokal.backends.events import Finish, OutputEvent, TextDelta, ToolCallDelta, ToolCallStart
from lokal.server.doors.openai.translate import (
    UsageTotal,
    chat_logprobs,
    completion_logprobs,
    tool_call_wire,
    usage_wire,
)
from lokal.server.doors.openai.wire import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Completion,
    CompletionChoice,
)
from lokal.server.doors.render import Start
from lokal.server.doors.wire import SamplingFields
from lokal.server.errors import APIError, envelope
from lokal.server.streaming import Frame

DONE = Frame("[DONE]")


@dataclass(frozen=True, slots=True)
class StreamMeta:
    id: str
    created: int
    model: str
    include_usage: bool
    n: int
    """Choices per prompt; a choice's prompt is index // n."""
    logprobs: bool

    @classmethod
    def of(cls, prefix: str, body: SamplingFields, request_id: str, n: int,
           logprobs: bool) -> StreamMeta:
        """One response's identity: `prefix` is OpenAI's id prefix (chatcmpl, cmpl)."""
        return cls(
            id=f"{prefix}-{request_id.removeprefix('req_')}",
            created=int(time.time()),
            model=body.model,
            include_usage=bool(body.stream and body.stream_options
                               and body.stream_options.include_usage),
            n=n,
            logprobs=logprobs,
        )


@dataclass
class _OpenAIRenderer:
    """What chat and completions share: usage totals, the usage chunk, [DONE], the error."""

    meta: StreamMeta
    n_choices: int
    framing: Literal["sse", "ndjson"] = "sse"
    ping: Frame | None = None
    total: UsageTotal = field(default_factory=UsageTotal)
    null_usage = False
    """Chat chunks carry `"usage": null` until the last one (as OpenAI sends them); the legacy
    completions schema does not allow null there, so those omit the key."""

    def started(self, start: Start) -> None:
        """Nothing to take: usage comes with each choice's last chunk."""
    kind = ""

    def wrap(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> Frame:
        obj = {"id": self.meta.id, "object": self.kind, "created": self.meta.created,
               "model": self.meta.model, "choices": choices}
        if usage is not None:
            obj["usage"] = usage
        elif self.meta.include_usage and self.null_usage:
            obj["usage"] = None
        return Frame(obj)

    def count(self, event: Finish) -> None:
        self.total.add(event.usage, event.choice // self.meta.n)

    async def tail(self) -> list[Frame]:
        usage = [self.wrap([], dict(usage_wire(self.total.usage())))] \
            if self.meta.include_usage else []
        return [*usage, DONE]

    def failure(self, error: APIError) -> list[Frame]:
        return [Frame(envelope(error.message, error.type, error.param, error.code)), DONE]


@dataclass
class ChatRenderer(_OpenAIRenderer):
    null_usage = True
    kind = "chat.completion.chunk"

    def _choice(self, index: int, delta: dict[str, Any], logprobs: Any = None,
                finish: str | None = None) -> Frame:
        return self.wrap([{"index": index, "delta": delta, "logprobs": logprobs,
                           "finish_reason": finish}])

    def head(self) -> list[Frame]:
        return [self._choice(i, {"role": "assistant", "content": ""})
                for i in range(self.n_choices)]

    def event(self, event: OutputEvent) -> list[Frame]:
        """OpenAI's tool-call delta shape: index, id and name once, then the arguments in
        fragments as the model writes them."""
        if isinstance(event, TextDelta):
            logprobs = chat_logprobs(event.logprobs) if event.logprobs else None
            return [self._choice(event.choice, {"content": event.text}, logprobs)]
        if isinstance(event, ToolCallStart):
            return [self._choice(event.choice, {"tool_calls": [
                {"index": event.call, "id": event.id, "type": "function",
                 "function": {"name": event.name, "arguments": ""}}]})]
        if isinstance(event, ToolCallDelta):
            return [self._choice(event.choice, {"tool_calls": [
                {"index": event.call, "function": {"arguments": event.arguments}}]})]
        if isinstance(event, Finish):
            self.count(event)
            return [self._choice(event.choice, {"content": ""}, finish=event.reason)]
        return []

    async def body(self, events: Sequence[OutputEvent]) -> ChatCompletion:
        texts: dict[int, list[str]] = {i: [] for i in range(self.n_choices)}
        logprobs: dict[int, list[TokenLogprob]] = {}
        finishes: dict[int, Finish] = {}
        for event in events:
            if isinstance(event, TextDelta):
                texts.setdefault(event.choice, []).append(event.text)
                logprobs.setdefault(event.choice, []).extend(event.logprobs)
            elif isinstance(event, Finish):
                finishes[event.choice] = event
                self.count(event)
        choices: list[Choice] = []
        for i in sorted(texts):
            text = "".join(texts[i])
            message: ChatCompletionMessage = {"role": "assistant", "content": text,
                                              "refusal": None}
            finish = finishes.get(i)
            reason = finish.reason if finish else None
            if finish is not None and finish.calls:
                message["content"] = text or None
                message["tool_calls"] = [tool_call_wire(call) for call in finish.calls]
            elif reason == "tool_calls":  # announced calls, none complete: the model stopped
                reason = "stop"
            choices.append({"index": i, "message": message, "finish_reason": reason,
                            "logprobs": chat_logprobs(logprobs.get(i, []))
                            if self.meta.logprobs else None})
        return {"id": self.meta.id, "object": "chat.completion", "created": self.meta.created,
                "model": self.meta.model, "choices": choices,
                "usage": usage_wire(self.total.usage())}


@dataclass
class CompletionRenderer(_OpenAIRenderer):
    kind = "text_completion"
    offsets: dict[int, int] = field(default_factory=dict)

    def head(self) -> list[Frame]:
        return []

    def event(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta):
            logprobs = None
            if event.logprobs:
                logprobs = completion_logprobs(event.logprobs,
                                               self.offsets.get(event.choice, 0))
            self.offsets[event.choice] = self.offsets.get(event.choice, 0) + len(event.text)
            return [self.wrap([{"index": event.choice, "text": event.text,
                                "logprobs": logprobs, "finish_reason": None}])]
        if isinstance(event, Finish):
            self.count(event)
            return [self.wrap([{"index": event.choice, "text": "", "logprobs": None,
                                "finish_reason": event.reason}])]
        return []

    async def body(self, events: Sequence[OutputEvent]) -> Completion:
        texts: dict[int, list[str]] = {i: [] for i in range(self.n_choices)}
        logprobs: dict[int, list[TokenLogprob]] = {}
        finishes: dict[int, Any] = dict.fromkeys(range(self.n_choices))
        for event in events:
            if isinstance(event, TextDelta):
                texts.setdefault(event.choice, []).append(event.text)
                logprobs.setdefault(event.choice, []).extend(event.logprobs)
            elif isinstance(event, Finish):
                finishes[event.choice] = event.reason
                self.count(event)
        choices: list[CompletionChoice] = [
            {"index": i, "text": "".join(texts[i]),
             "logprobs": completion_logprobs(logprobs.get(i, []), 0)
             if self.meta.logprobs else None,
             "finish_reason": finishes.get(i)}
            for i in sorted(texts)
        ]
        return {"id": self.meta.id, "object": "text_completion", "created": self.meta.created,
                "model": self.meta.model, "choices": choices,
                "usage": usage_wire(self.total.usage())}
