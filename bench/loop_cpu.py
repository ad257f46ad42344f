"""CPU time per streamed token of each thread of a lokal server: the event loop's share is
what lokal's HTTP path costs on top of the engine.

    .venv/bin/python bench/loop_cpu.py [--requests 20] [--clients 1] [--py-spy 20]
                                       [-- extra lokal serve args]

Starts lokal (work tree, the default model YAML with explicit threads), sends `requests`
streaming greedy chats (`clients` at a time) after one warm-up, and reads every thread's CPU
ticks from /proc/<pid>/task/*/stat before and after. On this 2-core machine llama.cpp's two
threads keep both cores busy during a step, so the event loop's CPU per token adds to every
step; throughput drifts 10-20% with the machine, this figure by ~0.05 ms between runs.
With --py-spy SECONDS, py-spy samples the server meanwhile (200 Hz, without stopping it) and
the engine thread's samples are split by what it was doing: inside llama_decode, sampling,
handing events to the event loop, detokenizing, the rest of the scheduler's Python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from harness import (
    OUT_DIR,
    REPO,
    async_client,
    derived_config,
    export_lokal,
    free_port,
    lokal_server,
    stream_chat,
)

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of `pid`, by thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


async def drive(base_url: str, model: str, requests: int, clients: int) -> int:
    body = {"model": model, "max_tokens": 128, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a cat."}],
            "stream_options": {"include_usage": True}}
    pending = list(range(requests))
    tokens = 0

    async def client_loop() -> None:
        nonlocal tokens
        while pending:
            pending.pop()
            result = await stream_chat(client, base_url, body)
            if result.error is not None:
                raise RuntimeError(result.error)
            tokens += result.completion_tokens or len(result.content_times)

    async with async_client(clients, 300.0) as client:
        await asyncio.gather(*(client_loop() for _ in range(clients)))
    return tokens


# The engine thread's samples by the innermost frame that says what it was doing.
PARTS = [("sampling (llama_sampler_sample)", "sampling.py"),
         ("waking the event loop (self-pipe write, GIL hand-over)", "_write_to_self"),
         ("detokenizing", "detokenize"),
         ("grammar masks (llguidance)", "guidance.py"),
         ("stop-sequence matching", "stops.py")]


def engine_breakdown(raw: Path) -> list[tuple[str, float]]:
    """Share of the engine thread's samples per part, from py-spy's raw (collapsed) output.
    py-spy names a frame by function and line: the decode is the scheduler's llama_decode
    line (without --native, which would stop the process, the C frames are not shown)."""
    source = (REPO / "backends" / "llamacpp" / "scheduler.py").read_text(encoding="utf-8")
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "llama_decode(" in text)
    decode = f"scheduler.py:{line})"
    parts: collections.Counter[str] = collections.Counter()
    for entry in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = entry.rpartition(" ")
        frames = stack.split(";")
        if "lokal-llamacpp" not in frames[0]:
            continue
        if frames[-1].endswith(decode):
            part = "inside llama_decode (the engine computing)"
        else:
            part = next((name for name, where in PARTS if any(where in f for f in frames)),
                        "other scheduler Python (batch fill, events, bookkeeping)")
        parts[part] += int(count)
    total = sum(parts.values())
    return [(name, n / total) for name, n in parts.most_common()] if total else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--config", type=Path,
                        default=REPO / "configs" / "smollm2-135m-instruct.yaml")
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                        help="also sample the server with py-spy for this long")
    parser.add_argument("--lokal-ref", help="measure this git commit of lokal (exported to "
                        "bench/.cache) instead of the work tree")
    parser.add_argument("serve_args", nargs="*", help="passed on to `lokal serve`")
    args = parser.parse_args()
    lokal_dir = export_lokal(args.lokal_ref) if args.lokal_ref else REPO

    out = OUT_DIR / "loop_cpu"
    config = derived_config(args.config, args.threads, None, out / "lokal.yaml")
    server = lokal_server(lokal_dir, config, free_port(), out / "lokal.log")
    server.command += args.serve_args
    model = yaml.safe_load(config.read_text(encoding="utf-8"))["id"]
    with server.running():
        pid = server.pid
        assert pid is not None
        asyncio.run(drive(server.base_url, model, 1, 1))  # warm-up, not measured
        spy = None
        raw = out / "py-spy.txt"
        if args.py_spy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                 "--duration", str(int(args.py_spy)), "--rate", "200", "--threads",
                 "--nonblocking", "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = thread_cpu(pid)
        started = time.perf_counter()
        tokens = asyncio.run(drive(server.base_url, model, args.requests, args.clients))
        wall = time.perf_counter() - started
        after = thread_cpu(pid)
        if spy is not None and spy.wait(timeout=args.py_spy + 60) != 0:
            raise RuntimeError("py-spy failed (did the requests end before it did?)")
    print(f"{tokens} streamed tokens in {wall:.1f} s ({tokens / wall:.1f} tok/s), "
          f"{args.clients} client(s); the two busiest threads are "
          "llama.cpp's (the engine thread and its OpenMP worker)")
    for tid, seconds in sorted(after.items(), key=lambda kv: -(kv[1] - before.get(kv[0], 0))):
        used = seconds - before.get(tid, 0.0)
        if used >= 0.01:
            role = "main thread: the event loop" if tid == pid else "thread"
            print(f"  thread {tid} ({role}): {used:.2f} s CPU = {used / tokens * 1000:.3f} ms "
                  "per token")
    if args.py_spy:
        print(f"engine thread, py-spy samples over {args.py_spy:.0f} s:")
        for name, share in engine_breakdown(raw):
            print(f"  {share * 100:5.1f}%  {name}")


if __name__ == "__main__":
    main()
