"""Prompt-lookup drafting (backends/llamacpp/lookup.py): what it proposes and when."""

from __future__ import annotations

from lokal.backends.llamacpp.lookup import FIRST_WINDOW, MIN_RETURN, PRIOR, Drafter
from lokal.backends.spec import Speculation

# Rows free (step_rows huge): drafting always pays, so these tests see every proposal.
OPTS = Speculation(max_draft=8, min_ngram=2, max_ngram=3, step_rows=1e6)
CPU = Speculation(max_draft=8, min_ngram=2, max_ngram=3)  # step_rows 0.7: rows cost


def test_drafts_what_followed_the_latest_ngram_earlier() -> None:
    d = Drafter([1, 2, 3, 4, 5, 6, 9, 2, 3, 7, 8, 2, 3], OPTS)
    # (2, 3) occurred twice before; the latest was followed by 7, 8.
    assert d.draft(8, rows=1) == [7, 8, 2, 3]


def test_prefers_the_longest_matching_ngram() -> None:
    d = Drafter([5, 2, 3, 40, 41, 1, 2, 3, 50, 51, 9, 1, 2, 3], OPTS)
    # (1, 2, 3) matches once (followed by 50); (2, 3) last by 50 too, but earlier by 40.
    assert d.draft(2, rows=1) == [50, 51]
    d = Drafter([7, 2, 3, 40, 41, 9, 1, 2, 3], OPTS)
    assert d.draft(2, rows=1) == [40, 41]


def test_no_match_no_draft_and_limits_hold() -> None:
    d = Drafter([1, 2, 3, 4], OPTS)
    assert d.draft(8, rows=1) == []
    d.extend([1, 2])
    assert d.draft(8, rows=1) == [3, 4, 1, 2][:FIRST_WINDOW]
    assert d.draft(1, rows=1) == [3]
    assert d.draft(0, rows=1) == []


def test_window_grows_on_full_accepts_and_shrinks_on_rejection() -> None:
    d = Drafter(list(range(10)) * 3, OPTS)
    assert d.window == FIRST_WINDOW
    d.verified(4, 4)
    assert d.window == 8
    d.verified(8, 8)
    assert d.window == 8  # max_draft
    d.verified(8, 3)
    assert d.window == 3
    d.verified(3, 0)
    assert d.window == 1


def test_drafts_only_where_they_pay_and_learns_from_shadows_meanwhile() -> None:
    copying = list(range(10)) * 5  # what follows 8, 9 is 0, 1, 2, ...
    bar = MIN_RETURN / (1 + CPU.step_rows)  # alone
    d = Drafter(copying, CPU)
    assert d.rate == PRIOR < bar
    # Not worth it yet, even alone: the proposal becomes a shadow, no row spent.
    assert d.draft(4, rows=1) == []
    assert d.draft(4, rows=1) == []  # one shadow at a time
    d.extend([0, 1, 2, 3])  # the text went on as the shadow said
    assert PRIOR < d.rate < bar and d.window == 8
    assert d.draft(8, rows=1) == []
    d.extend([4, 5, 6, 7, 8, 9, 0, 1])  # and again
    assert d.rate > bar
    assert d.draft(4, rows=1) == [2, 3, 4, 5]  # now drafted for real
    assert d.draft(4, rows=2) == []  # beside another sequence it must be taken more often
    # Text that stops copying: shadows miss, the estimate falls, no real draft is made.
    d = Drafter(copying, CPU)
    for token in range(100, 130):
        assert d.draft(4, rows=1) == []
        d.extend([token])
    assert d.rate < PRIOR
    cheap = Drafter(copying, Speculation(step_rows=1000))
    assert cheap.draft(4, rows=8)
