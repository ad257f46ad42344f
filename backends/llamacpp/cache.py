"""Slots (one llama.cpp sequence each) and the choice of where a new prompt's KV comes from."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


def copy_min_gain(context_length: int) -> int:
    """Prompt tokens a copy of another slot's KV stream must save to be worth it. llama.cpp
    copies streams whole, so the cost grows with the context each slot holds: measured here
    (SmolLM2-135M, 2 cores) ~25 ms for an 8192-cell stream against ~4.7 ms per prompt token
    recomputed, i.e. break-even near 6 tokens; this asks for about 3x that."""
    return max(16, context_length // 512)


# ggml-cpu's flash attention takes a tiled path (F32 accumulation) for a sequence with at least
# this many query tokens in a micro-batch and a row-by-row path (F16 accumulation) below it
# (GGML_FA_TILE_Q in the llama.cpp that llama-cpp-python 0.3.36 vendors). A prompt token gets
# the same KV values and logits whichever way its prompt is split, as long as it lands on the
# same side of this threshold, and is not alone when it was not (one query token takes a path
# of its own); that is what keeps cached and fresh evaluations bit-identical.
FA_TILE_ROWS = 64

# With one KV stream per slot, llama.cpp splits a batch into micro-batches of consecutive
# sequence ids (llama_batch_allocr::split_equal, sequential), and each micro-batch is one more
# pass over the weights. Measured here (SmolLM2-135M, 2 cores): 4 decoding slots take 31 ms a
# step as 0-3 and 46 ms as 0,2,4,6; 7 of 8 with a gap 59-67 ms, all 8 52-58 ms. A slot that
# starts a new run of busy ids thus costs ~5 ms on every step of the request, more than
# recomputing this many prompt tokens once (about 1-5 ms each), so slot choice counts it so.
RUN_COST_TOKENS = 64


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
    restore: Saved | None = None
    """KV saved in host RAM holding a longer prefix; its cells are restored into `slot`."""


def last_token_alone(n_prompt: int, chunk: int, tile: int = FA_TILE_ROWS) -> bool:
    """Whether a prompt's last token is fed alone, a step after the rest: where the prompt's
    last chunk is a tiled one (`tile`+ rows), so that a repeated prompt can keep all its cells
    but that token's instead of recomputing `tile` of them. A shorter last chunk keeps the
    last token with it (the prompt's first token comes a step sooner; a repeat recomputes 2)."""
    return n_prompt - (n_prompt - 1) // chunk * chunk >= tile


def stable_reuse(common: int, n_prompt: int, chunk: int, tile: int = FA_TILE_ROWS) -> int:
    """How many of `common` cached leading tokens a prompt of `n_prompt` tokens can keep so
    that the tokens recomputed after them give exactly what a fresh evaluation gives.

    A fresh evaluation feeds the prompt in chunks that end on multiples of `chunk`, the last
    token alone where `last_token_alone`; a cached one feeds [reuse, n_prompt) in chunks ending
    on the same multiples (and the last token alone likewise), so only the chunk that holds
    token `reuse` is split differently. Its recomputed part must be on the same side of
    `tile` rows as the whole chunk was (widened back to `tile` tokens where it would be
    narrower), and be more than one token if the chunk was. Reuse is thus never more than
    `tile` tokens short of the shared prefix (it used to be rounded down to whole chunks),
    and a repeated prompt (a regenerated reply, a retried request) keeps all but its last
    token where that goes alone, which is all a fresh evaluation of it leaves to recompute."""
    last = n_prompt - 1
    alone = last_token_alone(n_prompt, chunk, tile)
    reuse = max(0, min(common, last))
    if (alone and reuse == last) or reuse % chunk == 0:
        return reuse
    start = reuse // chunk * chunk
    # The fresh evaluation's chunk holding token `reuse`.
    end = min(start + chunk, last if alone else n_prompt)
    fresh_rows = end - start
    if fresh_rows >= tile:
        return min(reuse, end - tile)
    if end - reuse == 1 and fresh_rows > 1:
        return reuse - 1  # one query token alone takes yet another path (KV split by thread)
    return reuse


def usable(cached: list[int], prompt: list[int], chunk: int) -> int:
    """Leading tokens of `prompt` whose KV `cached` tokens' cells can stand in for (see
    stable_reuse)."""
    return stable_reuse(common_prefix(cached, prompt), len(prompt), chunk)


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
    def __init__(self, n_slots: int, chunk: int, copy_min_gain: int) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self._chunk = chunk
        self._copy_min_gain = copy_min_gain

    def free(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy]

    def reusable(self, slot: Slot, prompt: list[int]) -> int:
        """Cached tokens `prompt` may keep from `slot`: a repeated request (same seed, or
        temperature 0) gets the same logits and the same text, cached or not."""
        return usable(slot.tokens, prompt, self._chunk)

    def new_runs(self, slot: Slot) -> int:
        """How many more runs of consecutive busy sequence ids (micro-batches per decoding
        step, see RUN_COST_TOKENS) there are once `slot` is busy too: 1, 0 or -1."""
        def busy(seq_id: int) -> bool:
            return 0 <= seq_id < len(self.slots) and self.slots[seq_id].busy

        return 1 - busy(slot.seq_id - 1) - busy(slot.seq_id + 1)

    def place(self, prompt: list[int]) -> Placement:
        """Pick a free slot for `prompt` (the caller checked one is free)."""
        reuse = {s.seq_id: self.reusable(s, prompt) for s in self.slots}

        def worth(slot: Slot) -> tuple[float, float]:
            # Taking a slot keeps `reuse` of its cached tokens and discards the rest, which a
            # later request might have reused (the rest of a long conversation, say): count
            # each discarded token half a reused one. A slot away from the busy ones costs a
            # micro-batch per step. Ties go to the least recently used.
            kept = reuse[slot.seq_id]
            return (kept - 0.5 * (len(slot.tokens) - kept)
                    - RUN_COST_TOKENS * self.new_runs(slot), -slot.last_used)

        best_free = max(self.free(), key=worth)
        own = reuse[best_free.seq_id]
        donor = max(self.slots, key=lambda s: reuse[s.seq_id])
        shared = reuse[donor.seq_id]
        if donor is not best_free and shared - own >= self._copy_min_gain:
            return Placement(best_free, shared, donor)
        return Placement(best_free, own, None)

    def spare(self) -> Slot:
        """The free slot best to overwrite: next to the busy ones (RUN_COST_TOKENS), then the
        one whose cache is cheapest to lose: the emptiest, then the least recently used (the
        caller checked one is free)."""
        return min(self.free(), key=lambda s: (self.new_runs(s), len(s.tokens), s.last_used))

    def claim(self, slot: Slot) -> None:
        slot.busy = True
        slot.last_used = time.monotonic()

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()


@dataclass(slots=True, eq=False)  # compared and hashed by identity: PromptCache's keys
class Saved:
    """The KV cells of one sequence, serialised by llama.cpp (`llama_state_seq_get_data`)."""

    tokens: list[int]
    data: Any
    """A ctypes byte array, restored with `llama_state_seq_set_data`."""
    size: int


class PromptCache:
    """Host-RAM store of KV that slots had to discard, least recently used out first. A request
    whose prefix is here gets the cells restored (about 1 ms for 300 tokens) instead of
    recomputed (about 4.7 ms per token on 2 cores)."""

    def __init__(self, capacity_bytes: int, chunk: int) -> None:
        self.capacity = capacity_bytes
        self._chunk = chunk
        self._entries: OrderedDict[Saved, None] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: list[int]) -> tuple[Saved | None, int]:
        """The entry `prompt` can reuse most of, and how many tokens (see stable_reuse)."""
        found: tuple[Saved | None, int] = (None, 0)
        for entry in self._entries:
            reuse = usable(entry.tokens, prompt, self._chunk)
            if reuse > found[1]:
                found = (entry, reuse)
        return found

    def touch(self, entry: Saved) -> None:
        if entry in self._entries:
            self._entries.move_to_end(entry)

    def wants(self, tokens: list[int]) -> bool:
        """Whether saving `tokens` would add anything: it fits, and no entry already holds them
        (or more)."""
        if not tokens or self.capacity <= 0:
            return False
        return not any(common_prefix(e.tokens, tokens) == len(tokens) for e in self._entries)

    def put(self, saved: Saved) -> None:
        if saved.size > self.capacity:
            return
        for old in [e for e in self._entries
                    if common_prefix(e.tokens, saved.tokens) == len(e.tokens)]:
            del self._entries[old]  # a prefix of the new entry: superseded
            self.bytes -= old.size
        while self._entries and self.bytes + saved.size > self.capacity:
            self.bytes -= self._entries.popitem(last=False)[0].size
        self._entries[saved] = None
        self.bytes += saved.size
