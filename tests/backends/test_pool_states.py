"""The pool's phases: the table of moves (every move the pool makes is in it, any other raises,
every one in it happens), what each phase shows, and the paths models take through it, driven
on fake engines that load in no time, slowly (a gate), fail, or finish stopping when cancelled."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest

from lokal.backends.base import (
    BackendStats,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ModelInfo,
)
from lokal.backends.errors import ModelLoadFailed, NotReady
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool import ModelPool
from lokal.backends.pool_entry import MOVES, Entry, IllegalMove, Lease, ModelState, Phase, Status
from lokal.backends.spec import ModelSpec

MB = 2**20
U, LG, L, D, E, UG, F = (Phase.UNLOADED, Phase.LOADING, Phase.LOADED, Phase.DRAINING,
                         Phase.EXPIRING, Phase.UNLOADING, Phase.FAILED)

# The path each scenario below takes, per model; together they must make every move.
SERVE_AND_UNLOAD = [(U, LG), (LG, L), (L, D), (D, UG), (UG, U)]
UNLOAD_CALLED_OFF = [(U, LG), (LG, L), (L, D), (D, L)]
EXPIRY_CALLED_OFF_THEN_DONE = [(U, LG), (LG, L), (L, E), (E, L), (L, E), (E, UG), (UG, U)]
FAIL_AND_RETRY = [(U, LG), (LG, F), (F, LG), (LG, F)]
UNREADABLE = [(U, F), (F, F)]
STOPPED = {"plain": [(U, LG), (LG, L), (L, U)], "draining": [(U, LG), (LG, L), (L, D), (D, U)],
           "expiring": [(U, LG), (LG, L), (L, E), (E, U)], "slow": [(U, LG)]}
STOPPED_WHILE_MAKING_ROOM = {"a": [(U, LG), (LG, L), (L, UG), (UG, U)], "b": [(U, LG), (LG, U)]}


class Fake:
    """An engine that starts at once, or once `gate` is set, or raises; `stubborn` makes
    its stop take a while and finish even when cancelled."""

    def __init__(self, spec: ModelSpec, gate: asyncio.Event | None = None,
                 broken: bool = False, stubborn: bool = False) -> None:
        self._info = ModelInfo(spec.id, 256, "fake", "test", "cpu")
        self.gate, self.broken, self.stubborn = gate, broken, stubborn
        self.stopped = False

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise RuntimeError("bad weights")

    async def stop(self) -> None:
        if self.stubborn:
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                pass  # cleanup that completes anyway
        self.stopped = True

    def stats(self) -> BackendStats:
        return BackendStats()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        yield Chunk(finish_reason="stop")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise NotImplementedError

    async def count_tokens(self, request: GenerationRequest) -> int:
        return 0


@pytest.fixture()
def moves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Phase, Phase]]:
    """Every move the pool makes, as (model, from, to), recorded through Entry.move."""
    made: list[tuple[str, Phase, Phase]] = []
    real = Entry.move

    def move(entry: Entry, to: Phase) -> None:
        before = entry.phase
        real(entry, to)
        made.append((entry.spec.id, before, to))

    monkeypatch.setattr(Entry, "move", move)
    return made


def path(moves: list[tuple[str, Phase, Phase]], model: str) -> list[tuple[Phase, Phase]]:
    return [(src, dst) for name, src, dst in moves if name == model]


def pool_of(names: list[str], budget: int = 100 * MB, ttl: dict[str, float] | None = None,
            engines: dict[str, Fake] | None = None,
            fakes: dict[str, dict[str, Any]] | None = None, **kw: Any) -> ModelPool:
    """Models of 40 MiB each, on Fakes made as they load (kept in `engines`): with the options
    `fakes` gives a model (Fake's gate, broken, stubborn), else plain ones."""
    made = {} if engines is None else engines
    options = fakes or {}
    estimator = kw.pop("estimator", lambda s: Footprint("cpu", weights=40 * MB))
    specs = [ModelSpec.model_validate({"id": n, "gguf": {"path": "/x.gguf"},
                                       **({"ttl": ttl[n]} if ttl and n in ttl else {})})
             for n in names]
    pool = ModelPool(specs, Hardware((), "test"), budgets={"cpu": budget},
                     factory=lambda s: made.setdefault(s.id, Fake(s, **options.get(s.id, {}))),
                     estimator=estimator,
                     measure=False, preload_default=False, **kw)
    pool.prepare()
    return pool


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test (with its fixtures) in a fresh event loop, failing it after 20 s."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 20))
    return run


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def draining_under_a_lease(pool: ModelPool) -> tuple[Lease, asyncio.Future[ModelState]]:
    """Leases "a" and asks for its unload; returns the lease and the unload once "a" drains."""
    held = await pool.acquire("a")
    unloading = asyncio.ensure_future(pool.unload("a"))
    await until(lambda: pool._catalog.entries["a"].phase is D)
    return held, unloading


def test_every_phase_shows_a_status_and_draining_is_loaded_expiring_unloading() -> None:
    shown = {phase: phase.status for phase in Phase}
    assert shown[D] is Status.LOADED and shown[E] is Status.UNLOADING
    assert {p: s for p, s in shown.items() if p not in (D, E)} == {
        p: Status(p.value) for p in Phase if p not in (D, E)}


def test_the_table_allows_its_moves_and_refuses_every_other() -> None:
    spec = ModelSpec.model_validate({"id": "m", "gguf": {"path": "/x.gguf"}})
    for src in Phase:
        for dst in Phase:
            entry = Entry(spec, "fake", "test", 0.0, False)
            entry._phase = src
            if dst in MOVES[src]:
                entry.move(dst)
                assert entry.phase is dst
            else:
                with pytest.raises(IllegalMove):
                    entry.move(dst)
                assert entry.phase is src


def test_a_model_that_began_unloading_never_comes_back() -> None:
    assert MOVES[UG] == {U}
    # Back to LOADED without a load: only a drain or an expiry called off, engine still up.
    assert {src for src, targets in MOVES.items() if L in targets} == {LG, D, E}


def test_the_scenarios_below_make_every_move_in_the_table() -> None:
    made = {move for p in (SERVE_AND_UNLOAD, UNLOAD_CALLED_OFF, EXPIRY_CALLED_OFF_THEN_DONE,
                           FAIL_AND_RETRY, UNREADABLE, *STOPPED.values(),
                           *STOPPED_WHILE_MAKING_ROOM.values()) for move in p}
    assert made == {(src, dst) for src, targets in MOVES.items() for dst in targets}


@in_loop
async def test_an_unload_drains_running_requests_while_new_ones_wait(moves: list[Any]) -> None:
    pool = pool_of(["a"])
    held, unloading = await draining_under_a_lease(pool)
    assert pool.find("a").status is Status.LOADED  # as /v1/models shows it
    assert [m.id for m in pool.models()] == ["a"] and list(pool.stats()) == ["a"]
    newcomer = asyncio.ensure_future(pool.acquire("a"))
    await asyncio.sleep(0.05)
    assert not newcomer.done() and not unloading.done()
    held.release()
    assert (await unloading).status is Status.UNLOADED
    (await newcomer).release()  # it waited for the unload, then loaded the model again
    assert path(moves, "a") == [*SERVE_AND_UNLOAD, (U, LG), (LG, L)]
    await pool.stop()


@in_loop
async def test_a_cancelled_unload_puts_the_model_back_in_service(moves: list[Any]) -> None:
    pool = pool_of(["a"])
    held, unloading = await draining_under_a_lease(pool)
    unloading.cancel()
    await asyncio.gather(unloading, return_exceptions=True)
    again = await asyncio.wait_for(pool.acquire("a"), 0.5)  # served at once
    held.release()
    again.release()
    assert path(moves, "a") == UNLOAD_CALLED_OFF and pool.unloads == {}
    await pool.stop()


@in_loop
async def test_a_request_calls_off_an_expiry_that_waits_for_its_turn(moves: list[Any]) -> None:
    gate = asyncio.Event()
    engines: dict[str, Fake] = {}
    pool = pool_of(["a", "slow"], ttl={"a": 0.1}, engines=engines,
                   fakes={"slow": {"gate": gate}})
    await pool.start()
    (await pool.acquire("a")).release()
    slow = asyncio.ensure_future(pool.acquire("slow"))  # its load holds the lifecycle
    await until(lambda: pool._catalog.entries["a"].phase is E)
    assert pool.find("a").status is Status.UNLOADING
    wanting = asyncio.ensure_future(pool.acquire("a"))
    await asyncio.sleep(0.05)
    assert not wanting.done()
    gate.set()
    lease = await wanting  # the same engine serves it: never stopped
    assert not engines["a"].stopped and pool.unloads == {}
    lease.release()
    (await slow).release()
    await until(lambda: pool.find("a").status is Status.UNLOADED)
    assert engines["a"].stopped and pool.unloads == {("a", "idle"): 1}
    assert path(moves, "a") == EXPIRY_CALLED_OFF_THEN_DONE
    await pool.stop()


@in_loop
async def test_a_failed_load_and_its_retry(moves: list[Any]) -> None:
    pool = pool_of(["a"], fakes={"a": {"broken": True}})
    with pytest.raises(ModelLoadFailed, match="bad weights"):
        await pool.acquire("a")
    with pytest.raises(ModelLoadFailed):  # within the back-off: no second load
        await pool.acquire("a")
    with pytest.raises(ModelLoadFailed, match="bad weights"):
        await pool.load("a")  # an explicit load retries at once
    assert path(moves, "a") == FAIL_AND_RETRY
    await pool.stop()


@in_loop
async def test_an_unreadable_model_fails_and_fails_again_on_retry(moves: list[Any]) -> None:
    def estimate(spec: ModelSpec) -> Footprint:
        raise OSError("truncated file")
    pool = pool_of(["a"], estimator=estimate)
    assert pool.find("a").status is Status.FAILED
    with pytest.raises(ModelLoadFailed, match="truncated file"):
        await pool.load("a")
    assert path(moves, "a") == UNREADABLE
    await pool.stop()


@in_loop
async def test_stop_unloads_loaded_draining_and_expiring_models(moves: list[Any]) -> None:
    gate = asyncio.Event()
    engines: dict[str, Fake] = {}
    pool = pool_of(list(STOPPED), budget=400 * MB, ttl={"expiring": 0.1}, engines=engines,
                   fakes={"slow": {"gate": gate}})
    await pool.start()
    (await pool.acquire("plain")).release()
    (await pool.acquire("expiring")).release()
    held = await pool.acquire("draining")
    unloading = asyncio.ensure_future(pool.unload("draining"))
    slow = asyncio.ensure_future(pool.acquire("slow"))
    await until(lambda: pool._catalog.entries["expiring"].phase is E
                and pool._catalog.entries["draining"].phase is D)
    await pool.stop()
    with pytest.raises(NotReady, match="shutting down"):
        await slow
    held.release()
    assert (await unloading).status is Status.UNLOADED
    assert all(engines[name].stopped for name in ("plain", "draining", "expiring"))
    assert {name: path(moves, name) for name in STOPPED} == STOPPED


@in_loop
async def test_stop_while_making_room_leaves_the_newcomer_unloaded(moves: list[Any]) -> None:
    engines: dict[str, Fake] = {}
    pool = pool_of(["a", "b"], budget=60 * MB, engines=engines,
                   fakes={"a": {"stubborn": True}})
    (await pool.acquire("a")).release()
    wanting = asyncio.ensure_future(pool.acquire("b"))
    await until(lambda: pool._catalog.entries["a"].phase is UG)
    await asyncio.sleep(0.05)  # "a" is stopping
    await pool.stop()
    with pytest.raises(NotReady, match="shutting down"):
        await wanting
    assert "b" not in engines  # never made
    assert {name: path(moves, name) for name in "ab"} == STOPPED_WHILE_MAKING_ROOM


@in_loop
async def test_a_load_nobody_waits_for_is_not_unloaded_under_its_next_request(
        moves: list[Any]) -> None:
    """A load whose requests gave up is kept until it is loaded and idle: chosen to make room
    while it loaded, it was unloaded right after, under the request that had come for it."""
    gate = asyncio.Event()
    engines: dict[str, Fake] = {}
    pool = pool_of(["a", "b"], budget=60 * MB, engines=engines, load_timeout=0.1,
                   fakes={"a": {"gate": gate}})
    with pytest.raises(NotReady, match="still loading"):
        await pool.acquire("a")
    pool.load_timeout = 10
    other = asyncio.ensure_future(pool.acquire("b"))
    await asyncio.sleep(0.05)
    again = asyncio.ensure_future(pool.acquire("a"))
    await asyncio.sleep(0.05)
    gate.set()
    lease = await again
    await asyncio.sleep(0.05)
    assert not engines["a"].stopped and not other.done()  # "a" serves; "b" waits
    lease.release()
    (await other).release()
    assert engines["a"].stopped and pool.unloads == {("a", "capacity"): 1}
    assert path(moves, "a") == [(U, LG), (LG, L), (L, UG), (UG, U)]
    await pool.stop()
