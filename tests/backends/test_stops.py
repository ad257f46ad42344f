"""StopMatcher: stop strings split across tokens, overlapping prefixes, many stops."""

from __future__ import annotations

from lokal.backends.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    if not m.stopped:
        out += m.flush()
    return out, m.stopped


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_inside_one_piece() -> None:
    assert run(["STOP"], ["helloSTOPworld"]) == ("hello", True)


def test_stop_split_across_pieces_is_held_back() -> None:
    m = StopMatcher(["</end>"])
    assert m.feed("text </") == "text "
    assert m.feed("en") == ""
    assert m.feed("d> more") == ""
    assert m.stopped


def test_false_alarm_prefix_is_released() -> None:
    m = StopMatcher(["abc"])
    assert m.feed("xab") == "x"
    assert m.feed("d") == "abd"
    assert not m.stopped


def test_earliest_of_many_stops_wins() -> None:
    stops = [f"s{i}" for i in range(20)] + ["b", "ab"]
    assert run(stops, ["xxab yy"]) == ("xx", True)


def test_held_text_flushed_at_end() -> None:
    assert run(["abc"], ["123ab"]) == ("123ab", False)


def test_empty_stop_strings_are_ignored() -> None:
    assert run(["", "z"], ["abc"]) == ("abc", False)


def test_the_matched_stop_string_is_known() -> None:
    matcher = StopMatcher(["###", "END"])
    assert matcher.feed("abc EN") == "abc "
    assert matcher.matched is None
    assert matcher.feed("D more") == "" and matcher.stopped and matcher.matched == "END"
