"""The Renderer protocol that serve_generation() drives: head frames, frames per event, tail
frames, a failure's frames, and the collected body of a non-streaming response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from lokal.backends.events import OutputEvent
from lokal.server.errors import APIError
from lokal.server.streaming import Frame


class Renderer(Protocol):
    """One response in one protocol. serve_generation() calls `head()`, then `event()` for
    each output event, then `tail()`; if the generation fails once frames have gone out,
    `failure()` instead of `tail()`. A non-streaming response is `body()` of all events.
    Renderers never see a Failure event: the driver turns it into `failure()` or a raise."""

    framing: Literal["sse", "ndjson"]
    ping: Frame | None
    """The SSE keep-alive event, for protocols that name one; None: an SSE comment."""

    def head(self) -> list[Frame]: ...

    def event(self, event: OutputEvent) -> list[Frame]: ...

    async def tail(self) -> list[Frame]: ...

    def failure(self, error: APIError) -> list[Frame]: ...

    async def body(self, events: Sequence[OutputEvent]) -> Any: ...
