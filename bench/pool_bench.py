"""Many models on one server: lokal's model pool against llama-server's router mode
(`--models-dir`, `--models-max`), same two models (SmolLM2-135M, Gemma-3-270M), same context,
slots and threads, interleaved in one run. Three workloads:

- cold: time to first token of the first request to a model that is not loaded (the GGUF in
  the page cache), on a freshly started server;
- swap: A/B/A/B... sequential requests where only one model fits (lokal: a memory budget;
  llama-server: --models-max 1);
- spread: 8 concurrent clients, 4 per model, both models fitting.

Every request's failure or cut stream is counted. Writes bench/out/pool-<time>/results.md.
Run: .venv/bin/python bench/pool_bench.py [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from anchors import (
    llama_cpp_commit,
    llama_cpp_python_version,
    llama_server_binary,
    llama_server_version,
)
from harness import (
    DONE,
    OUT_DIR,
    REPO,
    VENV_PYTHON,
    ServerProcess,
    free_port,
    git,
    machine_facts,
    ratio,
    sse_events,
)

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec

GEMMA_CONFIG = REPO / "configs" / "gemma-3-270m.yaml"
PROMPT = "The history of the printing press begins"


@dataclass
class Outcome:
    ttft: float = float("nan")
    seconds: float = float("nan")
    tokens: int = 0
    error: str | None = None


@dataclass
class Workload:
    name: str
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)


async def complete(client: httpx.AsyncClient, base_url: str, model: str,
                   max_tokens: int) -> Outcome:
    """One streaming /v1/completions request, timed from the client; an error event or a
    stream without [DONE] counts as a failure."""
    out = Outcome()
    started = time.perf_counter()
    done = False
    try:
        async with client.stream("POST", f"{base_url}/v1/completions", json={
                "model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}) as response:
            if response.status_code != 200:
                out.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return out
            async for event in sse_events(response):
                if event == DONE:
                    done = True
                    break
                if "error" in event:
                    out.error = json.dumps(event["error"])[:200]
                    break
                text = "".join(c.get("text") or "" for c in event.get("choices") or [])
                if text:
                    if out.tokens == 0:
                        out.ttft = time.perf_counter() - started
                    out.tokens += 1
                usage = event.get("usage") or {}
                if isinstance(usage.get("completion_tokens"), int):
                    out.tokens = usage["completion_tokens"]  # chunks may carry several
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - started
    if out.error is None and not done:
        out.error = "stream ended without [DONE]"
    return out


@dataclass
class Setup:
    smol: Path
    gemma: Path
    ctx: int
    slots: int
    threads: int
    work: Path
    binary: Path
    lokal_budget_one: str = ""
    lokal_budget_two: str = ""

    def lokal(self, only_one: bool) -> ServerProcess:
        folder = self.work / ("lokal-one" if only_one else "lokal-two")
        folder.mkdir(parents=True, exist_ok=True)
        for model_id, gguf in (("smol", self.smol), ("gemma", self.gemma)):
            (folder / f"{model_id}.yaml").write_text(yaml.safe_dump({
                "id": model_id, "gguf": {"path": str(gguf)}, "context_length": self.ctx,
                "llamacpp": {"parallel": self.slots, "n_threads": self.threads,
                             "prompt_cache_mib": 0}}))
        port = free_port()
        budget = self.lokal_budget_one if only_one else self.lokal_budget_two
        return ServerProcess(
            "lokal", [str(VENV_PYTHON), "-m", "lokal.server.cli", "serve", "--models-dir",
                      str(folder), "--memory-budget", budget, "--port", str(port),
                      "--log-level", "warning"],
            f"http://127.0.0.1:{port}", "/health/ready", self.work / "lokal.log")

    def llama_server(self, only_one: bool) -> ServerProcess:
        folder = self.work / "gguf"
        folder.mkdir(parents=True, exist_ok=True)
        for name, gguf in (("smol", self.smol), ("gemma", self.gemma)):
            link = folder / f"{name}.gguf"
            if not link.exists():
                link.symlink_to(gguf)
        port = free_port()
        return ServerProcess(
            "llama-server", [str(self.binary), "--models-dir", str(folder), "--models-max",
                             "1" if only_one else "2", "--host", "127.0.0.1", "--port",
                             str(port), "-c", str(self.ctx * self.slots), "-np",
                             str(self.slots), "-t", str(self.threads), "-tb",
                             str(self.threads), "--cache-ram", "0", "--no-webui"],
            f"http://127.0.0.1:{port}", "/health", self.work / "llama-server.log")


def page_cache(*paths: Path) -> None:
    for path in paths:
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


Servers = dict[str, Callable[[bool], ServerProcess]]
Body = Callable[[httpx.AsyncClient, str], Awaitable[tuple[list[Outcome], float]]]


def measure(name: str, servers: Servers, reps: int, only_one: bool, body: Body,
            before: Callable[[], None] = lambda: None) -> Workload:
    """`body` (outcomes, timed seconds) on a fresh server of each kind, interleaved per rep."""
    work = Workload(name)
    for _ in range(reps):
        for server_name, make in servers.items():
            before()
            server = make(only_one)
            with server.running():
                async def run(base: str = server.base_url) -> tuple[list[Outcome], float]:
                    async with httpx.AsyncClient(timeout=600) as client:
                        return await body(client, base)
                got, wall = asyncio.run(run())
            work.outcomes.setdefault(server_name, []).extend(got)
            work.wall.setdefault(server_name, []).append(wall)
    return work


def run_cold(setup: Setup, servers: Servers, reps: int) -> Workload:
    async def first(client: httpx.AsyncClient, base: str) -> tuple[list[Outcome], float]:
        got = await complete(client, base, "gemma", 8)
        return [got], got.seconds

    return measure("cold", servers, reps, False, first,
                   before=lambda: page_cache(setup.smol, setup.gemma))


def run_swap(servers: Servers, reps: int, rounds: int) -> Workload:
    async def alternate(client: httpx.AsyncClient, base: str) -> tuple[list[Outcome], float]:
        begun = time.perf_counter()
        got = [await complete(client, base, ("smol", "gemma")[i % 2], 16)
               for i in range(rounds)]
        return got, time.perf_counter() - begun

    return measure("swap", servers, reps, True, alternate)


def run_spread(servers: Servers, reps: int, max_tokens: int) -> Workload:
    async def spread(client: httpx.AsyncClient, base: str) -> tuple[list[Outcome], float]:
        for model in ("smol", "gemma"):  # both loaded before timing
            await complete(client, base, model, 2)
        begun = time.perf_counter()
        got = await asyncio.gather(*(complete(client, base, ("smol", "gemma")[i % 2],
                                              max_tokens) for i in range(8)))
        return list(got), time.perf_counter() - begun

    return measure("spread", servers, reps, False, spread)


def med(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def report(facts: dict[str, str], cold: Workload, swap: Workload, spread: Workload) -> str:
    def failures(work: Workload, name: str) -> str:
        bad = [o.error for o in work.outcomes.get(name, []) if o.error]
        return f"{len(bad)} of {len(work.outcomes.get(name, []))}" + \
            (f" ({bad[0]})" if bad else "")

    lines = ["| fact | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts.items()), ""]
    lines += ["| workload | figure | lokal | llama-server | lokal / llama-server | failed or "
              "cut (lokal; llama-server) |", "|---|---|---|---|---|---|"]
    ttft = {n: med([o.ttft for o in cold.outcomes.get(n, [])]) for n in ("lokal", "llama-server")}
    lines.append(f"| cold first request | TTFT s (median), lower is better | {ttft['lokal']:.2f} "
                 f"| {ttft['llama-server']:.2f} | {ratio(ttft['lokal'], ttft['llama-server'])} "
                 f"| {failures(cold, 'lokal')}; {failures(cold, 'llama-server')} |")
    wall = {n: med(swap.wall.get(n, [])) for n in ("lokal", "llama-server")}
    lines.append(f"| A/B/A/B, one fits | wall s per run (median), lower is better | "
                 f"{wall['lokal']:.2f} | {wall['llama-server']:.2f} | "
                 f"{ratio(wall['lokal'], wall['llama-server'])} | {failures(swap, 'lokal')}; "
                 f"{failures(swap, 'llama-server')} |")
    rate = {}
    for name in ("lokal", "llama-server"):
        tokens = sum(o.tokens for o in spread.outcomes.get(name, []))
        rate[name] = tokens / sum(spread.wall.get(name, [1.0]))
    lines.append(f"| 8 clients over two models | tokens/s (all runs), higher is better | "
                 f"{rate['lokal']:.1f} | {rate['llama-server']:.1f} | "
                 f"{ratio(rate['lokal'], rate['llama-server'])} | {failures(spread, 'lokal')}; "
                 f"{failures(spread, 'llama-server')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="requests per A/B run")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per spread request")
    args = parser.parse_args()
    version = llama_cpp_python_version()
    binary = llama_server_binary(version, args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = OUT_DIR / f"pool-{stamp}"
    setup = Setup(ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path(),
                  ModelSpec.from_yaml(GEMMA_CONFIG).gguf_path(), args.ctx, args.slots,
                  args.threads, work, binary)
    # Budgets from lokal's own estimates: only one of the two fits, or both do.
    from lokal.backends.footprint import llamacpp_footprint

    sizes = []
    for gguf in (setup.smol, setup.gemma):
        spec = ModelSpec.model_validate({"id": "x", "gguf": {"path": str(gguf)},
                                         "context_length": args.ctx, "llamacpp": {
                                             "parallel": args.slots, "prompt_cache_mib": 0}})
        sizes.append(llamacpp_footprint(spec).total)
    setup.lokal_budget_one = str(int(max(sizes) * 1.3))
    setup.lokal_budget_two = str(int(sum(sizes) * 1.5))
    servers: Servers = {
        "lokal": setup.lokal, "llama-server": setup.llama_server}
    facts = {**machine_facts(), "lokal": git("rev-parse", "--short", "HEAD"),
             "llama_server": llama_server_version(binary),
             "llama_cpp_commit": llama_cpp_commit(version),
             "models": "SmolLM2-135M-Instruct Q4_1, Gemma-3-270M Q4_K_M",
             "per model": f"{args.ctx} tokens x {args.slots} slots, {args.threads} threads, "
                          "no prompt cache",
             "lokal budgets": f"one fits: {setup.lokal_budget_one} B; both: "
                              f"{setup.lokal_budget_two} B",
             "llama-server": "--models-max 1 (one fits) / 2 (both)", "reps": str(args.reps)}
    cold = run_cold(setup, servers, args.reps)
    swap = run_swap(servers, args.reps, args.rounds)
    spread = run_spread(servers, args.reps, args.tokens)
    facts["load_average_after"] = machine_facts()["load_average"]
    text = report(facts, cold, swap, spread)
    print(text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.md").write_text(text + "\n", encoding="utf-8")
    raw: dict[str, Any] = {w.name: {"outcomes": {k: [o.__dict__ for o in v]
                                                 for k, v in w.outcomes.items()},
                                    "wall": w.wall} for w in (cold, swap, spread)}
    (work / "results.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    print(f"written: {work}/results.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
