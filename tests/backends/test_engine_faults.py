"""Injected faults in the llama.cpp engine thread (real engine, tiny random-weight GGUF): a fault
fails the requests it touched and the engine goes on; a dead thread answers everyone, refuses
new work with EngineDown and reports itself through stats (which health and metrics read)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lokal.backends.base import GenerationRequest, SamplingParams, TextPrompt
from lokal.backends.errors import EngineDown, EngineFailure
from lokal.backends.llamacpp.backend import LlamaCppBackend
from tests.tiny_gguf import tiny_backend


class Fatal(BaseException):
    """Something no `except Exception` catches (what kills a thread)."""


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LlamaCppBackend]:
    with tiny_backend(tmp_path, parallel=2) as engine:
        yield engine


def _request(i: int) -> GenerationRequest:
    return GenerationRequest(f"r{i}", TextPrompt("hello world"),
                             SamplingParams(temperature=0.0, max_tokens=4))


async def _run(engine: LlamaCppBackend, i: int) -> int:
    chunks = [c async for c in engine.generate(_request(i))]
    return sum(len(c.token_ids) for c in chunks)


def test_a_fault_fails_its_requests_and_the_engine_goes_on(
        backend: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler: Any = backend._scheduler
    real_step = scheduler._step
    calls = {"n": 0}

    def flaky_step() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected decode fault")
        real_step()

    monkeypatch.setattr(scheduler, "_step", flaky_step)
    with pytest.raises(EngineFailure):
        asyncio.run(_run(backend, 1))
    assert asyncio.run(_run(backend, 2)) > 0
    assert backend.stats().engine_error is None


def test_a_request_that_cannot_be_started_is_answered_and_leaks_no_slot(
        backend: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler: Any = backend._scheduler
    real_prepare = scheduler._prepare_slot
    calls = {"n": 0}

    def flaky_prepare(placement: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected admission fault")
        real_prepare(placement)

    monkeypatch.setattr(scheduler, "_prepare_slot", flaky_prepare)
    with pytest.raises(EngineFailure):
        asyncio.run(_run(backend, 1))

    async def both_slots() -> list[int]:
        return list(await asyncio.gather(_run(backend, 2), _run(backend, 3)))

    assert all(n > 0 for n in asyncio.run(asyncio.wait_for(both_slots(), 30)))
    assert backend.stats().running == 0 and backend.stats().engine_error is None


def test_a_dead_engine_thread_answers_everyone_and_refuses_new_work(
        backend: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler: Any = backend._scheduler

    def fatal_step() -> None:
        raise Fatal

    monkeypatch.setattr(scheduler, "_step", fatal_step)

    async def two_at_once() -> list[BaseException | int]:
        return await asyncio.gather(_run(backend, 1), _run(backend, 2), _run(backend, 3),
                                    return_exceptions=True)

    # Two take the slots and die with the thread; the third was waiting: all are answered.
    results = asyncio.run(asyncio.wait_for(two_at_once(), 30))
    assert all(isinstance(r, EngineDown) for r in results), results
    scheduler._thread.join(5)
    assert not scheduler._thread.is_alive()
    assert backend.stats().engine_error == "the llama.cpp engine thread died"
    with pytest.raises(EngineDown):
        asyncio.run(_run(backend, 4))
