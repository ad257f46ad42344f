"""The memory budget: sizes as users write them, and the pure choice of what to unload."""

from __future__ import annotations

import pytest

from lokal.backends.budget import Resident, choose_unloads, parse_size

GiB = 2**30


@pytest.mark.parametrize(("text", "size"), [
    ("123456", 123456), ("6GiB", 6 * GiB), ("6 GiB", 6 * GiB), ("512MiB", 512 * 2**20),
    ("2GB", 2 * 10**9), ("1.5gib", int(1.5 * GiB)), ("75%", 75), ("100%", 100),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, whole=100) == size


@pytest.mark.parametrize("text", ["", "lots", "6 parsecs", "0", "0%", "150%", "-1GiB", "%"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text, whole=100)


def r(id: str, size: int, used: float, **kw: bool) -> Resident:
    return Resident(id, size, "gpu" if kw.pop("gpu", False) else "cpu", used, **kw)


BUDGET = {"cpu": 100, "gpu": 100}


def test_fits_without_unloading() -> None:
    assert choose_unloads(40, "cpu", BUDGET, [r("a", 60, 1)]) == []


def test_least_recently_used_idle_model_goes_first_and_only_as_many_as_needed() -> None:
    residents = [r("new", 30, 3), r("old", 30, 1), r("mid", 30, 2)]
    assert choose_unloads(30, "cpu", BUDGET, residents) == ["old"]
    assert choose_unloads(60, "cpu", BUDGET, residents) == ["old", "mid"]


def test_pinned_busy_and_leaving_models_are_never_chosen() -> None:
    residents = [r("pinned", 40, 1, pinned=True), r("busy", 40, 2, busy=True),
                 r("idle", 20, 3)]
    assert choose_unloads(20, "cpu", BUDGET, residents) == ["idle"]
    assert choose_unloads(21, "cpu", BUDGET, residents) is None  # must wait for "busy"
    leaving = [r("going", 90, 1, leaving=True)]
    assert choose_unloads(20, "cpu", BUDGET, leaving) is None  # wait: it frees by itself


def test_models_on_another_device_do_not_free_this_one() -> None:
    residents = [r("gpu-model", 90, 1, gpu=True), r("cpu-model", 90, 2)]
    assert choose_unloads(20, "cpu", BUDGET, residents) == ["cpu-model"]
    assert choose_unloads(20, "gpu", BUDGET, residents) == ["gpu-model"]


def test_max_loaded_is_a_second_limit() -> None:
    residents = [r("a", 10, 2), r("b", 10, 1)]
    assert choose_unloads(10, "cpu", BUDGET, residents, max_loaded=3) == []
    assert choose_unloads(10, "cpu", BUDGET, residents, max_loaded=2) == ["b"]
    assert choose_unloads(10, "cpu", BUDGET, [r("a", 10, 1, busy=True)], max_loaded=1) is None


def test_a_need_beyond_the_whole_budget_never_fits() -> None:
    assert choose_unloads(101, "cpu", BUDGET, []) is None
