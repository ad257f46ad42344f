"""A request's deadline inside an engine's stream: one event-loop timer per request that ends
the stream with DeadlineExceeded once GenerationRequest.deadline has passed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lokal.backends.base import Deadline
from lokal.backends.errors import DeadlineExceeded


class DeadlineTimer:
    """Armed once per request, not per chunk (a timeout around each wait was ~10% of the event
    loop's CPU per streamed token). When it fires it calls `wake` with the error, to put
    something on the queue the stream waits on; the stream calls `check` after each wait, so a
    deadline that passes while the consumer holds a chunk ends the stream at its next wait.
    Made on the event loop's thread."""

    __slots__ = ("_deadline", "_timer", "_wake", "expired")

    def __init__(self, deadline: Deadline | None,
                 wake: Callable[[DeadlineExceeded], None]) -> None:
        self.expired = False
        self._deadline = deadline
        self._wake = wake
        self._timer: asyncio.TimerHandle | None = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(deadline.at - time.perf_counter(), 0.0), self._fire)

    def _fire(self) -> None:
        assert self._deadline is not None
        self.expired = True
        self._wake(DeadlineExceeded(self._deadline.seconds))

    def check(self) -> None:
        """Raises DeadlineExceeded once the timer has fired."""
        if self.expired:
            assert self._deadline is not None
            raise DeadlineExceeded(self._deadline.seconds)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
