"""Serving benchmark: lokal against llama.cpp's llama-server and llama-cpp-python's server, in one
run, on one GGUF, with the same threads, per-request context and parallel slots.

    .venv/bin/python bench/serve_bench.py [--clients 1,4,8,16] [--rounds 2] [--lokal-ref HEAD]

All servers are started on 127.0.0.1 and driven, one at a time, by 1, 4, 8 and 16 concurrent
streaming chat clients (each request 128 completion tokens, temperature 0, a fixed seed; `rounds`
requests per client, at least `--min-requests` per level). Every level runs `--interleave` times
per server, alternating the order of the servers (A B C, C B A, ...), and the requests of those
runs are pooled: the speed of this shared machine drifts by 10-20% over minutes, and
interleaving spreads the drift over all servers instead of charging it to whichever ran during
a slow spell. Each round starts every server afresh (--keep-servers: once for all rounds):
one process start of the same binary runs 5-10% faster or slower than the next, so a server
started once would carry that one draw through every round. Then each server in turn is
measured for prefix reuse: time to first token of turn 2 of a ~1,500-token conversation right
after turn 1 (warm), after one unrelated long prompt, and on a freshly started server (cold).
llama-server is built once
from the llama.cpp vendored in the llama-cpp-python sdist lokal runs on (bench/.cache).
Prints aggregate completion tokens/s, time to first token and inter-token latency p50/p95 per
server and lokal's ratios; writes JSON and Markdown under bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from anchors import (
    llama_cpp_commit,
    llama_cpp_python_server,
    llama_cpp_python_version,
    llama_server_binary,
    llama_server_version,
)
from harness import (
    OUT_DIR,
    REPO,
    CpuMeter,
    ServerProcess,
    StreamResult,
    add_quiet_options,
    async_client,
    derived_config,
    export_lokal,
    free_port,
    import_root,
    lokal_code_state,
    lokal_server,
    machine_facts,
    percentile,
    stop_on_sigterm,
    stream_chat,
    wait_until_quiet,
)
from report import render_markdown

T = TypeVar("T")

TOPICS = ["a lighthouse keeper", "a robot gardener", "a lost violin", "a desert caravan",
          "a submarine crew", "a mountain village", "a time-travelling cat", "an old bakery",
          "a comet hunter", "a river pirate", "a clockmaker's apprentice", "a polar station",
          "a travelling circus", "a haunted library", "a beekeeper", "a space elevator"]
WORDS = ("time year people way day man thing woman life child world school state family "
         "student group country problem hand part place case week company system program "
         "question work government number night point home water room mother area money story "
         "fact month lot right study book eye job word business issue side kind head house "
         "service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office "
         "door health person art war history party result change morning reason research girl "
         "guy moment air teacher force education river garden engine bridge market winter "
         "harbour signal letter window machine island forest valley").split()


@dataclass
class Target:
    """One server under test: how to start it on a port, and what its flags were."""

    name: str
    make: Callable[[int], ServerProcess]
    flags: str
    on_ready: Callable[[str], None] | None = None  # called with the base URL once started


@dataclass
class Level:
    """One concurrency level of one server."""

    clients: int
    requests: int
    wall_s: float
    tokens: int
    ttfts: list[float]
    gaps: list[float]
    errors: list[str]
    short: int  # requests that stopped before max_tokens (EOS)
    foreign_cores: float = float("nan")  # CPU other processes used meanwhile

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def stats(self) -> dict[str, float]:
        return {"tps": self.tps,
                "ttft_p50_ms": percentile(self.ttfts, 50) * 1000,
                "ttft_p95_ms": percentile(self.ttfts, 95) * 1000,
                "itl_p50_ms": percentile(self.gaps, 50) * 1000,
                "itl_p95_ms": percentile(self.gaps, 95) * 1000}


@dataclass
class PrefixRep:
    turn2_prompt_tokens: int | None = None
    turn1_ttft_s: float = float("nan")
    warm_ttft_s: float = float("nan")
    warm_cached_tokens: int | None = None
    evicted_ttft_s: float = float("nan")
    cold_ttft_s: float = float("nan")
    errors: list[str] = field(default_factory=list)
    foreign_cores: float = float("nan")  # during turn 1 .. turn 2 after the unrelated prompt


@dataclass
class ServerResult:
    name: str
    flags: str
    started_in_s: float = float("nan")
    levels: list[Level] = field(default_factory=list)
    prefix: list[PrefixRep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    run_tps: dict[int, list[float]] = field(default_factory=dict)
    """Per concurrency level, tok/s of each interleaved run in order (round i of every server
    ran back to back, so ratios are taken round by round)."""


# The copy workload: replies that copy their prompt (the user's text back, corrected or
# repeated), as edits and answers over retrieved documents do. SmolLM2-135M paraphrases as it
# copies, so about 60-75% of what prompt lookup drafts is taken: a modest copier.
PASSAGES = [
    "The harbour town wakes early. Fishing boats leave before dawn, and by seven the market "
    "is full of buyers. The baker on the corner sells bread to the sailors, and the school "
    "bell rings at eight. In the afternoon the wind turns, the boats come back, and the gulls "
    "follow them into the harbour. At night the lighthouse keeps watch over the bay.",
    "To reset the router, unplug it from the wall and wait thirty seconds. Plug it back in "
    "and wait until the green light stops blinking. Open a browser and go to the settings "
    "page. Sign in with the password printed on the label under the router. Choose a new "
    "network name and a new password, then save the settings and restart the router.",
    "Our library lends books for three weeks. You can renew a book twice, online or at the "
    "front desk, unless another reader has reserved it. Late returns cost ten cents a day. "
    "Children's books have no late fees. The reading room is open until nine on weekdays and "
    "until five on Saturdays; it is closed on Sundays and public holidays.",
    "Preheat the oven to two hundred degrees. Mix the flour, the sugar and a pinch of salt in "
    "a large bowl. Rub in the cold butter until the mixture looks like breadcrumbs. Add two "
    "eggs and a splash of milk, and stir until a soft dough forms. Roll it out, cut it into "
    "rounds, and bake them for twelve minutes until golden.",
    "The committee met on Tuesday to review the budget. The treasurer reported that costs "
    "rose by four percent, mostly because of heating. The members agreed to delay the new "
    "roof until spring and to ask the council for a grant. The next meeting will be held on "
    "the first Monday of March in the village hall.",
    "Water the tomato plants every morning, and give them more in hot weather. Pinch out the "
    "side shoots as they appear, so that the plant puts its strength into the fruit. Tie the "
    "main stem to a cane as it grows. Feed the plants once a week after the first flowers "
    "open, and pick the tomatoes when they are fully red.",
    "The train to the coast leaves platform four at seven fifteen. It stops at every station "
    "until the junction, then runs fast to the sea. Passengers for the island change at the "
    "harbour station for the ferry, which leaves every hour. Tickets bought on the train cost "
    "more, so buy them at the station before you travel.",
    "Each new employee receives a laptop, a badge and an account on the first day. The badge "
    "opens the main door and the lifts. Please change your password within a week and keep "
    "your laptop locked when you leave your desk. Questions about pay go to the office "
    "manager, and questions about the computers go to the help desk.",
]
COPY_ASKS = ["Repeat exactly:\n\n{text}",
             "Correct any spelling mistakes in this text and return the whole text:\n\n{text}"]


def copy_request(index: int, max_tokens: int) -> dict[str, Any]:
    text = PASSAGES[index % len(PASSAGES)]
    ask = COPY_ASKS[(index // len(PASSAGES)) % len(COPY_ASKS)]
    return {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": ask.format(text=text)}],
            "max_tokens": max_tokens, "temperature": 0, "seed": 1234,
            "stream_options": {"include_usage": True}}


WORKLOADS = {"chat": lambda i, m: story_request(i, m), "copy": copy_request}


def story_request(index: int, max_tokens: int) -> dict[str, Any]:
    topic = TOPICS[index % len(TOPICS)]
    return {"messages": [{"role": "user", "content": f"Write a long story about {topic}. "
                          f"Describe the places, the people and every event in detail."}],
            "max_tokens": max_tokens, "temperature": 0, "seed": 1234,
            "stream_options": {"include_usage": True}}


def document(seed: int, words: int) -> str:
    """Deterministic filler prose: sentences of common words, different for every seed."""
    rng = random.Random(seed)
    sentences: list[str] = []
    count = 0
    while count < words:
        length = rng.randint(8, 16)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
        count += length
    return " ".join(sentences)


def conversation(seed: int, words: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"You are a careful analyst (case {seed})."},
            {"role": "user", "content": "Here is a report:\n\n" + document(seed, words)
             + "\n\nSummarize the report in three sentences."}]


async def drive(base_url: str, model: str, clients: int, requests: int, max_tokens: int,
                timeout_s: float, level_timeout_s: float, workload: str = "chat") -> Level:
    """`requests` streaming chats, at most `clients` at a time (each client one after another);
    what is still running after `level_timeout_s` is cancelled and counted as an error."""
    pending = list(range(requests))
    results: list[StreamResult] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while pending:
            index = pending.pop(0)
            body = WORKLOADS[workload](index, max_tokens)
            results.append(await stream_chat(client, base_url, {"model": model, **body}))

    errors: list[str] = []
    async with async_client(clients, timeout_s) as client:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client_loop(client) for _ in range(clients))),
                                   level_timeout_s)
        except TimeoutError:
            errors.append(f"level cut off after {level_timeout_s:.0f}s with "
                          f"{requests - len(results)} requests unfinished")
        wall = time.perf_counter() - started
    good = [r for r in results if r.error is None]
    return Level(clients=clients, requests=requests, wall_s=wall,
                 tokens=sum(r.tokens for r in good), ttfts=[r.ttft for r in good],
                 gaps=[g for r in good for g in r.gaps],
                 errors=errors + [r.error for r in results if r.error is not None],
                 short=sum(1 for r in good if r.tokens < max_tokens))


async def one_chat(base_url: str, model: str, messages: list[dict[str, str]], max_tokens: int,
                   timeout_s: float) -> StreamResult:
    async with async_client(1, timeout_s) as client:
        return await stream_chat(client, base_url, {
            "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "seed": 1234, "stream_options": {"include_usage": True}})


def quietly(label: str, run: Callable[[int], tuple[T, float]], args: argparse.Namespace,
            deadline: float) -> T | None:
    """Run a measurement after waiting for a quiet machine; repeat it (bounded) while other
    processes used more than --max-foreign cores during it; keep the quietest attempt."""
    best: tuple[T, float] | None = None
    for attempt in range(1 + args.retries):
        if time.monotonic() > deadline:
            break
        wait_until_quiet(args.quiet_cores, args.quiet_wait)
        value, foreign = run(attempt)
        if best is None or foreign < best[1]:
            best = (value, foreign)
        if foreign <= args.max_foreign:
            break
        why = "incomplete (errors or cut off)" if foreign == float("inf") \
            else f"other processes used {foreign:.2f} cores meanwhile"
        print(f"  {label}: {why}; "
              f"{'repeating' if attempt < args.retries else 'keeping the quietest attempt'}",
              flush=True)
    return None if best is None else best[0]


def prefix_rep(server: ServerProcess, model: str, rep: int, attempt: int,
               args: argparse.Namespace) -> tuple[PrefixRep, list[dict[str, str]]]:
    """Turn 1 of a new long conversation, turn 2 right after it (warm), then turn 2 again
    after an unrelated long prompt."""
    base_url = server.base_url
    meter = CpuMeter([pid for pid in (server.pid,) if pid is not None])
    seed = 1000 + 10 * rep + attempt  # a new conversation on every attempt: turn 1 is uncached
    turn1 = conversation(seed, args.prefix_words)
    first = asyncio.run(one_chat(base_url, model, turn1, args.turn1_tokens, args.timeout))
    turn2 = [*turn1, {"role": "assistant", "content": first.text},
             {"role": "user", "content": "Now list the three most important facts."}]
    warm = asyncio.run(one_chat(base_url, model, turn2, args.turn2_tokens, args.timeout))
    asyncio.run(one_chat(base_url, model, conversation(seed + 5000, args.prefix_words), 1,
                         args.timeout))  # an unrelated long prompt
    evicted = asyncio.run(one_chat(base_url, model, turn2, args.turn2_tokens, args.timeout))
    prefix = PrefixRep(turn2_prompt_tokens=warm.prompt_tokens, turn1_ttft_s=first.ttft,
                       warm_ttft_s=warm.ttft, warm_cached_tokens=warm.cached_tokens,
                       evicted_ttft_s=evicted.ttft,
                       errors=[r.error for r in (first, warm, evicted) if r.error])
    prefix.foreign_cores = meter.foreign_cores()
    return prefix, turn2


def pooled(runs: list[Level]) -> Level:
    """One level from several runs of it: requests, tokens and wall time added up."""
    return Level(clients=runs[0].clients, requests=sum(r.requests for r in runs),
                 wall_s=sum(r.wall_s for r in runs), tokens=sum(r.tokens for r in runs),
                 ttfts=[t for r in runs for t in r.ttfts], gaps=[g for r in runs for g in r.gaps],
                 errors=[e for r in runs for e in r.errors], short=sum(r.short for r in runs),
                 foreign_cores=max(r.foreign_cores for r in runs))


def describe(level: Level) -> str:
    s = level.stats()
    return (f"{s['tps']:.1f} tok/s, TTFT p50 {s['ttft_p50_ms']:.0f} ms "
            f"p95 {s['ttft_p95_ms']:.0f} ms, ITL p50 {s['itl_p50_ms']:.1f} ms, "
            f"errors {len(level.errors)}, short {level.short}, "
            f"other load {level.foreign_cores:.2f} cores")


def measure_levels(targets: list[Target], model: str, args: argparse.Namespace,
                   deadline: float) -> dict[str, ServerResult]:
    """Every concurrency level on every server, `--interleave` times, alternating the order of
    the servers, each run pooled. By default every round starts every server afresh: the same
    binary on the same machine runs 5-10% faster or slower from one process start to the next
    (bench/RESULTS.md), so servers started once would carry one draw each through every
    round. With --keep-servers they are started once, all at the same time (idle ones use no
    CPU)."""
    results = {t.name: ServerResult(t.name, t.flags) for t in targets}
    runs: dict[int, dict[str, list[Level]]] = {c: {t.name: [] for t in targets}
                                               for c in args.clients}

    def start(target: Target, stack: ExitStack) -> ServerProcess:
        wait_until_quiet(args.quiet_cores, args.quiet_wait)
        server = stack.enter_context(target.make(free_port()).running())
        if target.on_ready is not None:
            target.on_ready(server.base_url)
        result = results[target.name]
        result.flags = target.flags
        if math.isnan(result.started_in_s):
            result.started_in_s = server.started_in_s
        print(f"[{target.name}] ready in {server.started_in_s:.1f}s: {target.flags}", flush=True)
        asyncio.run(one_chat(server.base_url, model, [{"role": "user", "content": "Hi."}], 8,
                             args.timeout))  # warm-up, not measured
        return server

    def run(target: Target, server: ServerProcess, clients: int, rep: int) -> None:
        requests = max(clients * args.rounds, args.min_requests)

        def level_run(_attempt: int) -> tuple[Level, float]:
            meter = CpuMeter([pid for pid in (server.pid,) if pid is not None])
            level = asyncio.run(drive(server.base_url, model, clients, requests,
                                      args.max_tokens, args.timeout,
                                      args.level_timeout, args.workload))
            level.foreign_cores = meter.foreign_cores()
            cut_off = len(level.ttfts) < requests
            return level, float("inf") if cut_off else level.foreign_cores

        level = quietly(f"{target.name} {clients} clients, run {rep + 1}", level_run, args,
                        deadline)
        if level is None:
            return
        runs[clients][target.name].append(level)
        print(f"[{target.name}] {clients:>2} clients, run {rep + 1}, {requests} requests: "
              f"{describe(level)}", flush=True)

    if args.keep_servers:
        with ExitStack() as stack:
            running = [(target, start(target, stack)) for target in targets]
            for clients in args.clients:
                for rep in range(args.interleave):
                    for target, server in running if rep % 2 == 0 else running[::-1]:
                        run(target, server, clients, rep)
    else:
        for rep in range(args.interleave):
            for target in targets if rep % 2 == 0 else targets[::-1]:
                if time.monotonic() > deadline:
                    break
                with ExitStack() as stack:
                    server = start(target, stack)
                    for clients in args.clients:
                        run(target, server, clients, rep)
    for clients, by_server in runs.items():
        for name, levels in by_server.items():
            if len(levels) < args.interleave:
                results[name].skipped.append(
                    f"{clients} clients: {args.interleave - len(levels)} of "
                    f"{args.interleave} runs (time budget spent)")
            if levels:
                results[name].levels.append(pooled(levels))
                results[name].run_tps[clients] = [lv.tps for lv in levels]
    return results


def measure(target: Target, model: str, args: argparse.Namespace,
            deadline: float) -> ServerResult:
    """Concurrency levels and warm/evicted prefix reuse on one running server, then cold
    prefix reuse on fresh ones."""
    result = ServerResult(target.name, target.flags)
    turn2s: list[list[dict[str, str]]] = []
    wait_until_quiet(args.quiet_cores, args.quiet_wait)
    server = target.make(free_port())
    with server.running():
        base_url = server.base_url
        result.started_in_s = server.started_in_s
        if target.on_ready is not None:
            target.on_ready(base_url)
            result.flags = target.flags
        print(f"[{target.name}] ready in {server.started_in_s:.1f}s: {target.flags}", flush=True)
        asyncio.run(one_chat(base_url, model, [{"role": "user", "content": "Hi."}], 8,
                             args.timeout))  # warm-up, not measured
        for clients in args.clients:
            requests = max(clients * args.rounds, args.min_requests)

            def level_run(_attempt: int, clients: int = clients,
                          requests: int = requests) -> tuple[Level, float]:
                meter = CpuMeter([pid for pid in (server.pid,) if pid is not None])
                level = asyncio.run(drive(base_url, model, clients, requests, args.max_tokens,
                                          args.timeout, args.level_timeout, args.workload))
                level.foreign_cores = meter.foreign_cores()
                cut_off = len(level.ttfts) < requests
                return level, float("inf") if cut_off else level.foreign_cores

            level = quietly(f"{target.name} {clients} clients", level_run, args, deadline)
            if level is None:
                result.skipped.append(f"{clients} clients (time budget spent)")
                continue
            result.levels.append(level)
            print(f"[{target.name}] {clients:>2} clients, {requests} requests: "
                  f"{describe(level)}", flush=True)
        for rep in range(args.prefix_reps):
            def rep_run(attempt: int, rep: int = rep) -> tuple[
                    tuple[PrefixRep, list[dict[str, str]]], float]:
                done = prefix_rep(server, model, rep, attempt, args)
                return done, done[0].foreign_cores

            found = quietly(f"{target.name} prefix rep {rep + 1}", rep_run, args, deadline)
            if found is None:
                result.skipped.append(f"prefix rep {rep + 1} (time budget spent)")
                continue
            prefix, turn2 = found
            result.prefix.append(prefix)
            turn2s.append(turn2)
            print(f"[{target.name}] prefix rep {rep + 1}: turn 2 {prefix.turn2_prompt_tokens} "
                  f"prompt tokens; turn 1 {prefix.turn1_ttft_s * 1000:.0f} ms, warm "
                  f"{prefix.warm_ttft_s * 1000:.0f} ms (cached {prefix.warm_cached_tokens}), "
                  f"after unrelated {prefix.evicted_ttft_s * 1000:.0f} ms, other load "
                  f"{prefix.foreign_cores:.2f} cores", flush=True)
    for prefix, turn2 in zip(result.prefix, turn2s, strict=True):
        def cold_run(_attempt: int, turn2: list[dict[str, str]] = turn2) -> tuple[
                StreamResult, float]:
            fresh = target.make(free_port())
            with fresh.running():
                asyncio.run(one_chat(fresh.base_url, model, [{"role": "user", "content": "Hi."}],
                                     8, args.timeout))
                meter = CpuMeter([pid for pid in (fresh.pid,) if pid is not None])
                cold = asyncio.run(one_chat(fresh.base_url, model, turn2, args.turn2_tokens,
                                            args.timeout))
                return cold, meter.foreign_cores()

        cold = quietly(f"{target.name} cold turn 2", cold_run, args, deadline)
        if cold is None:
            result.skipped.append("cold prefix rep (time budget spent)")
            continue
        prefix.cold_ttft_s = cold.ttft
        if cold.error:
            prefix.errors.append(cold.error)
        print(f"[{target.name}] cold (fresh server) turn 2: {cold.ttft * 1000:.0f} ms",
              flush=True)
    return result


def lokal_slots(base_url: str, model: str, config: Path) -> int:
    """lokal's parallel slots: from /v1/models when it says, else the YAML (default 1)."""
    try:
        for entry in httpx.get(f"{base_url}/v1/models", timeout=10).json().get("data", []):
            for key in ("parallel", "slots", "n_parallel"):
                if entry.get("id") == model and isinstance(entry.get(key), int):
                    return int(entry[key])
    except (httpx.HTTPError, ValueError):
        pass
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    return int((data.get("llamacpp") or {}).get("parallel") or 1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8,16",
                        help="concurrency levels, comma-separated (default 1,4,8,16)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="requests per client at each level (default 2)")
    parser.add_argument("--min-requests", type=int, default=4,
                        help="at least this many requests per level (default 4)")
    parser.add_argument("--interleave", type=int, default=4,
                        help="runs of every level per server, servers in alternating order, "
                             "pooled; ratios are also given round by round (default 4)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="chat",
                        help="chat: long stories (replies that do not copy); copy: replies "
                             "that copy the prompt (repeat / correct a passage)")
    parser.add_argument("--prefix-reps", type=int, default=3)
    parser.add_argument("--prefix-words", type=int, default=1250,
                        help="words of the turn-1 report (~1,500 prompt tokens at turn 2)")
    parser.add_argument("--turn1-tokens", type=int, default=64)
    parser.add_argument("--turn2-tokens", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=None,
                        help="slots for every server (default: lokal's /v1/models or YAML)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every server (default: the YAML's, else all cores)")
    parser.add_argument("--config", type=Path, default=None, help="lokal model YAML")
    parser.add_argument("--lokal-ref", default=None,
                        help="measure this git commit of lokal instead of the work tree")
    parser.add_argument("--servers", default="lokal,llama-server,llama-cpp-python",
                        help="which servers, comma-separated, lokal first (default all three); "
                             "also lokal-spec / lokal-nospec (lokal with speculation on / off) "
                             "and "
                             "llama-server-spec (llama-server drafting from the context: "
                             "--spec-type ngram-simple with lokal's n-gram and draft sizes)")
    parser.add_argument("--keep-servers", action="store_true",
                        help="start each server once for all rounds instead of afresh for "
                             "every round (a process start moves a server's speed by 5-10%%)")
    parser.add_argument("--build-jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="per-request timeout in seconds (default 300)")
    parser.add_argument("--level-timeout", type=float, default=300.0,
                        help="cut a concurrency level off after this many seconds (default 300)")
    add_quiet_options(parser, "before each server and level,", wait_s=120.0)
    parser.add_argument("--max-foreign", type=float, default=0.25,
                        help="repeat a level or prefix rep during which other processes used "
                             "more cores than this (default 0.25) ...")
    parser.add_argument("--retries", type=int, default=2,
                        help="... at most this many times, keeping the quietest (default 2)")
    parser.add_argument("--max-minutes", type=float, default=40.0,
                        help="stop starting new work after this long (default 40)")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not all(1 <= c <= 256 for c in args.clients) or not 1 <= args.rounds <= 100:
        parser.error("--clients must be 1..256 each and --rounds 1..100")
    if not 1 <= args.interleave <= 20:
        parser.error("--interleave must be 1..20")
    if not 1 <= args.max_tokens <= 4096 or not 0 <= args.prefix_reps <= 20:
        parser.error("--max-tokens must be 1..4096 and --prefix-reps 0..20")
    return args


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    deadline = time.monotonic() + args.max_minutes * 60
    lokal_dir = export_lokal(args.lokal_ref) if args.lokal_ref else REPO
    sys.path.insert(0, str(import_root(lokal_dir)))  # the measured lokal's spec
    from lokal.backends.spec import ModelSpec

    source_config = args.config or lokal_dir / "configs" / "smollm2-135m-instruct.yaml"
    source_opts = yaml.safe_load(source_config.read_text(encoding="utf-8")).get("llamacpp") or {}
    threads = args.threads or source_opts.get("n_threads") or os.cpu_count() or 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = OUT_DIR / f"serve_bench-{stamp}"
    config = derived_config(source_config, threads, args.parallel, log_dir / "lokal.yaml")
    spec = ModelSpec.from_yaml(config)
    gguf, ctx, model = str(spec.gguf_path()), spec.context_length, spec.id
    version = llama_cpp_python_version()
    facts = {**machine_facts(), "lokal": lokal_code_state(lokal_dir, args.lokal_ref),
             "llama_cpp_python": version, "gguf": gguf, "threads": str(threads),
             "context": str(ctx), "max_tokens": str(args.max_tokens),
             "rounds": str(args.rounds), "min_requests": str(args.min_requests),
             "workload": args.workload,
             "interleave": str(args.interleave)}
    print(f"load average before: {facts['load_average']}", flush=True)
    binary = llama_server_binary(version, args.build_jobs) \
        if {"llama-server", "llama-server-spec"} & set(args.servers) else None
    python = llama_cpp_python_server(version) if "llama-cpp-python" in args.servers else None
    if binary is not None:
        facts["llama_server"] = llama_server_version(binary)
    facts["llama_cpp_commit"] = llama_cpp_commit(version)
    slots = [args.parallel or 1]

    def make_lokal(port: int) -> ServerProcess:
        return lokal_server(lokal_dir, config, port, log_dir / "lokal.log")

    def speculation_variant(name: str, enabled: bool) -> Target:
        """lokal with speculation switched on or off, the rest of its YAML as is."""
        variant = log_dir / f"{name}.yaml"
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
        data["llamacpp"].setdefault("speculation", {})["enabled"] = enabled
        variant.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

        def make(port: int) -> ServerProcess:
            server = lokal_server(lokal_dir, variant, port, log_dir / f"{name}.log")
            server.name = name
            return server

        return Target(name, make, f"lokal serve --config {variant.name} "
                                  f"(as lokal, speculation.enabled {str(enabled).lower()})")

    # llama-server's prompt lookup (ngram-simple) with lokal's n-gram and draft length.
    spec_opts = spec.llamacpp.speculation
    spec_flags = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n",
                  str(spec_opts.min_ngram), "--spec-ngram-simple-size-m",
                  str(spec_opts.max_draft)]

    # Tuning flags, shown in the results; the model path, host and port are added at start.
    llama_server_flags = ["-t", str(threads), "-tb", str(threads), "-c", "CTX", "-np", "SLOTS",
                          "--alias", model, "--no-webui"]
    llama_cpp_python_flags = ["--n_threads", str(threads), "--n_threads_batch", str(threads),
                              "--n_ctx", str(ctx), "--interrupt_requests", "false",
                              "--model_alias", model]

    def server_flags() -> list[str]:
        # -c is shared by the slots: give each the context lokal promises every request.
        values = {"CTX": str(ctx * slots[0]), "SLOTS": str(slots[0])}
        return [values.get(flag, flag) for flag in llama_server_flags]

    def make_llama_server(port: int, spec: bool = False) -> ServerProcess:
        assert binary is not None
        name = "llama-server-spec" if spec else "llama-server"
        command = [str(binary), "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
                   *server_flags(), *(spec_flags if spec else [])]
        return ServerProcess(name, command, f"http://127.0.0.1:{port}", "/health",
                             log_dir / f"{name}.log")

    def make_llama_cpp_python(port: int) -> ServerProcess:
        assert python is not None
        command = [str(python), "-m", "llama_cpp.server", "--model", gguf, "--host",
                   "127.0.0.1", "--port", str(port), *llama_cpp_python_flags]
        return ServerProcess("llama-cpp-python", command, f"http://127.0.0.1:{port}",
                             "/v1/models", log_dir / "llama-cpp-python.log")

    def lokal_target() -> Target:
        target = Target("lokal", make_lokal, "")

        def on_ready(base_url: str) -> None:
            if args.parallel is None:
                slots[0] = lokal_slots(base_url, model, config)
            target.flags = (f"lokal serve --config {config.name} (n_threads {threads}, "
                            f"context_length {ctx}, slots {slots[0]}, n_batch "
                            f"{spec.llamacpp.n_batch})")

        target.on_ready = on_ready
        return target

    def llama_server_target(spec: bool = False) -> Target:
        name = "llama-server-spec" if spec else "llama-server"
        target = Target(name, lambda port: make_llama_server(port, spec), "")

        def on_ready(_base_url: str) -> None:  # the flags as started, slots known by then
            target.flags = "llama-server " + " ".join(
                [*server_flags(), *(spec_flags if spec else [])])

        target.on_ready = on_ready
        return target

    targets: dict[str, Callable[[], Target]] = {
        "lokal": lokal_target,
        "llama-server": llama_server_target,
        "llama-server-spec": lambda: llama_server_target(spec=True),
        "lokal-nospec": lambda: speculation_variant("lokal-nospec", False),
        "lokal-spec": lambda: speculation_variant("lokal-spec", True),
        "llama-cpp-python": lambda: Target(
            "llama-cpp-python", make_llama_cpp_python,
            "python -m llama_cpp.server " + " ".join(llama_cpp_python_flags))}
    chosen = [targets[name]() for name in args.servers]
    levels = measure_levels(chosen, model, args, deadline)
    clients, args.clients = args.clients, []  # measure() does prefix reuse only from here
    results = []
    for target in chosen:
        result = measure(target, model, args, deadline) if args.prefix_reps else \
            ServerResult(target.name, target.flags)
        found = levels[target.name]
        result.levels, result.skipped = found.levels, found.skipped + result.skipped
        result.run_tps = found.run_tps
        result.started_in_s = found.started_in_s
        results.append(result)
    args.clients = clients
    facts["slots"] = str(slots[0])
    facts["load_average_after"] = machine_facts()["load_average"]
    text = render_markdown(facts, [asdict(r) | {"level_stats": [lv.stats() for lv in r.levels]}
                                   for r in results])
    print()
    print(text)
    (log_dir / "results.json").write_text(json.dumps(
        {"facts": facts, "results": [asdict(r) for r in results]}, indent=1), encoding="utf-8")
    (log_dir / "results.md").write_text(text + "\n", encoding="utf-8")
    print(f"\nwritten: {log_dir}/results.md, results.json, server logs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
