"""ModelPool on the real llama.cpp engine (tiny random-weight GGUFs, loaded in milliseconds):
one load however many ask, leases that keep a model from unloading, room made by unloading
idle models, timeouts that name the holders, failed loads with back-off, ttl. Footprints are
given, not estimated, so the budget arithmetic is exact."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lokal.backends.base import Backend, GenerationRequest, SamplingParams, TextPrompt
from lokal.backends.errors import ModelLoadFailed, ModelNotFound, ModelTooLarge, NotReady
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.llamacpp.backend import LlamaCppBackend
from lokal.backends.pool import ModelPool
from lokal.backends.pool_entry import Status
from lokal.backends.spec import ModelSpec
from tests.tiny_gguf import write_tiny_gguf

MB = 2**20
T = TypeVar("T")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("pool") / "tiny.gguf")


def spec(path: Path, model_id: str, **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate({
        "id": model_id, "gguf": {"path": str(path)}, "context_length": 256,
        "llamacpp": {"n_threads": 1, "parallel": 2, "n_batch": 32, "prompt_cache_mib": 0},
        **extra})


class Engines:
    """The real engine factory, counting the engines it makes per model."""

    def __init__(self) -> None:
        self.made: Counter[str] = Counter()

    def __call__(self, model: ModelSpec) -> Backend:
        self.made[model.id] += 1
        return LlamaCppBackend(model, reason="test")


def pool_of(specs: list[ModelSpec], engines: Engines, budget: int = 100 * MB,
            sizes: dict[str, int] | None = None, **kw: Any) -> ModelPool:
    sizes = sizes or {}
    pool = ModelPool(specs, Hardware((), "test"), budgets={"cpu": budget}, factory=engines,
                     estimator=lambda s: Footprint("cpu", weights=sizes.get(s.id, 40 * MB)),
                     measure=False, **kw)
    pool.prepare()
    return pool


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(make(), 60))


async def b_refused_while_a_is_held(gguf: Path, waiters: int = 0, **kw: Any) -> NotReady:
    """In a 60 MiB pool of "a" and "b" (40 MiB each) with `kw`: holds "a", queues `waiters`
    requests for "b", and returns the NotReady one more request for "b" raises; then releases
    "a" and the leases the queued requests get, and stops the pool."""
    pool = pool_of([spec(gguf, "a"), spec(gguf, "b")], Engines(), budget=60 * MB, **kw)
    held = await pool.acquire("a")
    waiting = [asyncio.ensure_future(pool.acquire("b")) for _ in range(waiters)]
    if waiting:
        await asyncio.sleep(0.1)
    with pytest.raises(NotReady) as caught:
        await pool.acquire("b")
    held.release()
    for lease in await asyncio.gather(*waiting):
        lease.release()
    await pool.stop()
    return caught.value


def test_eight_concurrent_first_requests_load_once(gguf: Path) -> None:
    engines = Engines()

    async def go() -> None:
        pool = pool_of([spec(gguf, "a")], engines)
        assert pool.find("a").status is Status.UNLOADED
        leases = await asyncio.gather(*(pool.acquire("a") for _ in range(8)))
        assert engines.made["a"] == 1
        assert len({id(lease.backend) for lease in leases}) == 1
        assert pool.find("a").running == 8
        for lease in leases:
            lease.release()
        assert pool.find("a").running == 0
        await pool.stop()

    run(go)


def test_a_request_for_a_model_that_does_not_fit_waits_for_the_busy_one(gguf: Path) -> None:
    engines = Engines()

    async def go() -> None:
        pool = pool_of([spec(gguf, "a"), spec(gguf, "b")], engines, budget=60 * MB)
        held = await pool.acquire("a")
        wanting = asyncio.ensure_future(pool.acquire("b"))
        await asyncio.sleep(0.3)
        assert not wanting.done()  # "a" is in use: never unloaded under its request
        assert pool.find("a").status is Status.LOADED
        assert pool.find("b").waiting == 1
        held.release()
        lease = await wanting
        assert pool.find("a").status is Status.UNLOADED
        assert pool.unloads == {("a", "capacity"): 1}
        lease.release()
        await pool.stop()

    run(go)


def test_waiting_for_room_times_out_naming_the_holders(gguf: Path) -> None:
    refused = run(lambda: b_refused_while_a_is_held(gguf, load_timeout=0.3))
    assert refused.code == "insufficient_memory"
    assert "a (40.0 MiB, in use)" in refused.message
    assert "60.0 MiB" in refused.message


def test_a_model_larger_than_the_budget_is_refused_naming_both_sizes(gguf: Path) -> None:
    async def go() -> None:
        pool = pool_of([spec(gguf, "big")], Engines(), budget=60 * MB,
                       sizes={"big": 200 * MB})
        with pytest.raises(ModelTooLarge) as caught:
            await pool.acquire("big")
        assert "200.0 MiB" in caught.value.message and "60.0 MiB" in caught.value.message
        await pool.stop()

    run(go)


def test_a_full_wait_queue_is_refused(gguf: Path) -> None:
    refused = run(lambda: b_refused_while_a_is_held(gguf, waiters=2, max_waiting=2))
    assert refused.code == "model_queue_full"


def test_unload_waits_for_running_requests_then_unloads(gguf: Path) -> None:
    async def go() -> None:
        pool = pool_of([spec(gguf, "a")], Engines())
        held = await pool.acquire("a")
        unloading = asyncio.ensure_future(pool.unload("a"))
        await asyncio.sleep(0.2)
        assert not unloading.done()
        assert pool.find("a").status is Status.LOADED
        held.release()
        assert (await unloading).status is Status.UNLOADED
        assert pool.unloads == {("a", "request"): 1}
        await pool.stop()

    run(go)


def test_stopping_an_engine_answers_its_running_request(gguf: Path) -> None:
    async def go() -> None:
        pool = pool_of([spec(gguf, "a")], Engines())
        async with pool.lease("a") as backend:
            stream = backend.generate(GenerationRequest(
                "r", TextPrompt("hello"), SamplingParams(max_tokens=200, temperature=0)))
            await anext(stream)
            await backend.stop()  # what shutdown does, with the request still running
            with pytest.raises(NotReady, match="stopped while this request ran"):
                async for _ in stream:
                    pass
        await pool.stop()

    run(go)


def test_a_failed_load_is_reported_retried_after_back_off_or_on_demand(
        gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf.read_bytes()[:gguf.stat().st_size // 2])  # header intact
    engines = Engines()

    async def go() -> None:
        pool = pool_of([spec(broken, "broken"), spec(gguf, "ok")], engines)
        with pytest.raises(ModelLoadFailed):
            await pool.acquire("broken")
        state = pool.find("broken")
        assert state.status is Status.FAILED and state.error
        with pytest.raises(ModelLoadFailed):  # within the back-off: no second load
            await pool.acquire("broken")
        assert engines.made["broken"] == 1
        async with pool.lease("ok"):
            pass  # the other model serves
        with pytest.raises(ModelLoadFailed):
            await pool.load("broken")  # an explicit load retries at once
        assert engines.made["broken"] == 2
        assert pool.loads[("broken", "failure")] == 2
        await pool.stop()

    run(go)


def test_ttl_unloads_an_idle_model_and_pinned_models_stay(gguf: Path) -> None:
    async def go() -> None:
        pool = pool_of([spec(gguf, "a", ttl=0.3), spec(gguf, "p", ttl=0.3, pinned=True)],
                       Engines())
        starting = asyncio.ensure_future(pool.start())
        for name in ("a", "p"):
            async with pool.lease(name):
                pass
        for _ in range(40):
            await asyncio.sleep(0.1)
            if pool.find("a").status is Status.UNLOADED:
                break
        assert pool.find("a").status is Status.UNLOADED
        assert pool.find("p").status is Status.LOADED
        assert pool.unloads == {("a", "idle"): 1}
        await starting
        await pool.stop()

    run(go)


def test_names_must_be_unique_and_the_message_names_both_files(tmp_path: Path) -> None:
    first, second = tmp_path / "one.yaml", tmp_path / "two.yaml"
    first.write_text("id: a\ngguf: {path: x.gguf}\n")
    second.write_text("id: b\naliases: [a]\ngguf: {path: y.gguf}\n")
    with pytest.raises(ValueError) as caught:
        ModelPool([ModelSpec.from_yaml(first), ModelSpec.from_yaml(second)],
                  Hardware((), "test"))
    assert "one.yaml" in str(caught.value) and "two.yaml" in str(caught.value)


def test_a_model_configured_after_start_is_found_by_its_first_request(gguf: Path) -> None:
    engines = Engines()
    configured = [spec(gguf, "a")]
    looks: list[int] = []

    def discover() -> list[ModelSpec]:
        looks.append(1)
        return list(configured)

    async def go() -> None:
        pool = pool_of([spec(gguf, "a")], engines, discover=discover)
        with pytest.raises(ModelNotFound):
            pool.find("b")
        configured.append(spec(gguf, "b", aliases=["bee"]))
        with pytest.raises(ModelNotFound):  # looked 2 s ago: not again yet
            pool.find("b")
        assert len(looks) == 1
        pool._catalog.discovered_at -= 5  # as if 5 s had passed
        lease = await pool.acquire("bee")
        assert lease.backend.info.id == "b" and engines.made["b"] == 1
        lease.release()
        assert [s.id for s in pool.states()] == ["a", "b"]
        await pool.stop()

    run(go)
