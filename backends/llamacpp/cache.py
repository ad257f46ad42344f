"""Slots (one llama.cpp sequence each) and the choice of where a new prompt's KV comes from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Copying another slot's KV stream moves the whole stream buffer (llama.cpp copies streams
# whole); worth it only when it saves recomputing a good number of prompt tokens.
COPY_MIN_GAIN = 256


@dataclass(slots=True)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    """Exactly the tokens whose KV cells this sequence holds, at positions 0..len-1."""
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True, slots=True)
class Placement:
    slot: Slot
    reuse: int
    """Leading prompt tokens whose KV cells are kept (or copied) instead of recomputed."""
    copy_from: Slot | None
    """Another sequence holding a longer prefix; its cells are shared into `slot`."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts are long and mostly equal when they share a prefix.
    step = 64
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SlotTable:
    def __init__(self, n_slots: int, align: int) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self._align = align

    def free(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy]

    def reusable(self, slot: Slot, prompt: list[int]) -> int:
        """KV reuse is rounded down to the prompt batch size: the prompt's last batch then has
        the shape a fresh evaluation would give it, so a repeated request (same seed, or
        temperature 0) gets the same logits and the same text, cached or not."""
        common = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
        return common // self._align * self._align

    def place(self, prompt: list[int]) -> Placement:
        """Pick a free slot for `prompt` (the caller checked one is free)."""
        free = self.free()
        best_free = max(free, key=lambda s: (self.reusable(s, prompt), -s.last_used))
        own = self.reusable(best_free, prompt)
        donor = max(self.slots, key=lambda s: self.reusable(s, prompt))
        shared = self.reusable(donor, prompt)
        if donor is not best_free and shared - own >= COPY_MIN_GAIN:
            return Placement(best_free, shared, donor)
        if own == 0:
            # Nothing to reuse: take the least recently used slot, keeping warmer caches.
            best_free = min(free, key=lambda s: (len(s.tokens) > 0, s.last_used))
        return Placement(best_free, own, None)

    def claim(self, slot: Slot) -> None:
        slot.busy = True
        slot.last_used = time.monotonic()

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
