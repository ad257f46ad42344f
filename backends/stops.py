"""Stop-sequence matching over streamed text: holds back a tail that may begin a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text pieces; get back what is safe to emit and whether a stop string was hit.

    The stop text itself is never returned. Any number of stop strings is supported.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None
        """The stop string that ended the text, once one did."""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._pending += text
        first = -1
        for stop in self._stops:
            at = self._pending.find(stop)
            if at != -1 and (first == -1 or at < first):
                first, self.matched = at, stop
        if first != -1:
            out, self._pending, self.stopped = self._pending[:first], "", True
            return out
        hold = self._held_tail()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """The held-back text, once generation ended without completing a stop string."""
        out, self._pending = self._pending, ""
        return out

    def _held_tail(self) -> int:
        longest = 0
        pending = self._pending
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(pending)), longest, -1):
                if pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
