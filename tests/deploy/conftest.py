"""The chart's value sets, rendered once per test session by the real Helm binary."""

from __future__ import annotations

import pytest

from tests.deploy.chart import CHART, VALUE_SETS, Obj
from tests.deploy.helm import render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(CHART, *args) for name, args in VALUE_SETS.items()}
