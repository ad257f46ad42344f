"""The Renderer protocol that serve_generation() drives: head frames, frames per event, tail
frames, a failure's frames, and the collected body of a non-streaming response."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from lokal.backends.events import OutputEvent
from lokal.server.errors import APIError
from lokal.server.streaming import Frame


@dataclass(frozen=True, slots=True)
class Start:
    """What serve_generation() knows once the engine's first chunk is there."""

    prompt_tokens: int
    """The prompt's tokens, as the engine counted them (0 if it did not say)."""
    leased_at: float
    """When the model's lease came, time.perf_counter(): the model was loaded by then."""


class Renderer(Protocol):
    """One response in one protocol. serve_generation() calls `started()` once the first chunk
    is there, then `head()`, `event()` for each output event, then `tail()`; if the
    generation fails once frames have gone out, `failure()` instead of `tail()`. A
    non-streaming response is `started()`, then `body()` of all events.
    Renderers never see a Failure event: the driver turns it into `failure()` or a raise."""

    framing: Literal["sse", "ndjson"]
    ping: Frame | None
    """The SSE keep-alive event, for protocols that name one; None: an SSE comment."""

    def started(self, start: Start) -> None: ...

    def head(self) -> list[Frame]: ...

    def event(self, event: OutputEvent) -> list[Frame]: ...

    async def tail(self) -> list[Frame]: ...

    def failure(self, error: APIError) -> list[Frame]: ...

    async def body(self, events: Sequence[OutputEvent]) -> Any: ...
