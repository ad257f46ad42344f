"""Prompt-lookup drafting: guess a sequence's next tokens by finding its latest n-gram earlier
in its own context (prompt and reply so far) and copying what followed it there."""

from __future__ import annotations

from lokal.backends.spec import Speculation

# The first draft of a sequence: short, until its text shows that it copies.
FIRST_WINDOW = 4
# On a CPU a batch row costs about the same whether it decodes or checks a draft (llama.cpp
# applies the weights row by row; bench/step_shapes.py: one sequence's step 5.6 ms at 100 cells
# and 7.5 ms at 300, each of its first extra rows 3.4 and 4.4 ms, SmolLM2 on 2 cores), so a
# step's fixed part is about 0.7 of a row (Speculation.step_rows). A draft token pays off when
# the chance it is taken beats rows / (rows + step_rows): ~0.6 for one sequence decoding, ~0.9
# for eight, where every row already does full work (and lokal asks for MIN_RETURN more).
# How much a draft must be expected to return over its cost: at break-even (the estimate at
# rows / (rows + step_rows)) drafting gains nothing on average and makes the stream burstier;
# measured on the copy workload, where SmolLM2 took 62% of drafted tokens (break-even alone),
# it cost 4% at one client (bench/RESULTS.md). So a sequence drafts where its estimate beats
# MIN_RETURN x that: 0.74 alone, 0.93 beside one other, never beside 7 on a CPU.
MIN_RETURN = 1.25
# A sequence's acceptance estimate before anything was checked: below what drafting beside
# even one other sequence asks for, so a sequence drafts once its own text has shown that it
# copies (shadow drafts, checked for free), and how fast the estimate follows each check.
PRIOR = 0.5
EMA = 0.3
# Token ids packed into one int per n-gram (vocabularies stay far below 2**24 ids).
_BITS = 24


class Drafter:
    """The n-gram index of one sequence's tokens. `extend` adds tokens as they are accepted,
    `draft` proposes up to `limit` tokens. Costs one dict entry per token per n-gram size.

    Where a draft would not pay, the proposal is kept as a shadow instead and checked against
    the tokens that come next: the acceptance estimate and the window learn from it as from a
    real draft, without a batch row spent. So text that does not copy is never drafted for,
    and a sequence that starts copying gets drafts as soon as its shadows show it."""

    __slots__ = ("_index", "_matched", "_max", "_shadow", "_sizes", "_step_rows", "_tokens",
                 "rate", "window")

    def __init__(self, tokens: list[int], options: Speculation) -> None:
        self._tokens: list[int] = []
        self._sizes = range(options.min_ngram, options.max_ngram + 1)
        # One map per n-gram size: packed n-gram -> where its latest continuation starts.
        self._index: list[dict[int, int]] = [{} for _ in self._sizes]
        self._max = options.max_draft
        self._step_rows = options.step_rows
        self.window = min(FIRST_WINDOW, options.max_draft)
        """How many tokens to draft next: doubled by a draft taken whole, cut by a rejection."""
        self.rate = PRIOR
        """Estimated share of drafted tokens taken (moving average over drafts and shadows)."""
        self._shadow: list[int] = []
        """A draft not made, being checked against the tokens that follow."""
        self._matched = 0
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        seq = self._tokens
        for token in tokens:
            seq.append(token)
            end = len(seq) - 1  # the n-grams ending just before `token` now have a follower
            for n, index in zip(self._sizes, self._index, strict=True):
                if end >= n:
                    index[_pack(seq, end - n, end)] = end
            if self._shadow:
                if token == self._shadow[self._matched]:
                    self._matched += 1
                    if self._matched == len(self._shadow):
                        self.verified(len(self._shadow), self._matched)
                else:
                    self.verified(len(self._shadow), self._matched)

    def draft(self, limit: int, rows: int) -> list[int]:
        """Tokens following the latest earlier occurrence of the longest matching n-gram, if
        drafting is worth it in a step of `rows` decoding sequences; otherwise none, and the
        proposal becomes the shadow (unless one is still being checked)."""
        limit = min(limit, self.window)
        if limit <= 0:
            return []
        worth = self.rate > MIN_RETURN * rows / (rows + self._step_rows)
        if not worth and self._shadow:
            return []
        proposal = self._lookup(limit)
        if worth:
            self._shadow = []
            return proposal
        self._shadow, self._matched = proposal, 0
        return []

    def _lookup(self, limit: int) -> list[int]:
        seq = self._tokens
        end = len(seq)
        for n, index in zip(reversed(self._sizes), reversed(self._index), strict=True):
            if end < n:
                continue
            start = index.get(_pack(seq, end - n, end))
            if start is not None:
                return seq[start:start + limit]
        return []

    def verified(self, drafted: int, accepted: int) -> None:
        """Learn from a draft (or a shadow): the estimate follows the share taken; a draft
        taken whole earns a longer one next time; a rejection shrinks it to what was taken (at
        least 1), so text that does not copy pays little."""
        self._shadow = []
        self.rate += EMA * (accepted / drafted - self.rate)
        if accepted == drafted:
            self.window = min(self.window * 2, self._max)
        else:
            self.window = max(1, accepted)


def _pack(seq: list[int], start: int, end: int) -> int:
    key = 0
    for token in seq[start:end]:
        key = (key << _BITS) | token
    return key
