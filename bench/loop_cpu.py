"""CPU time per streamed token of each thread of a lokal server: the event loop's share is
what lokal's HTTP path costs on top of the engine.

    .venv/bin/python bench/loop_cpu.py [--requests 20] [--clients 1] [-- extra lokal serve args]

Starts lokal (work tree, the default model YAML with explicit threads), sends `requests`
streaming greedy chats (`clients` at a time) after one warm-up, and reads every thread's CPU
ticks from /proc/<pid>/task/*/stat before and after. On this 2-core machine llama.cpp's two
threads keep both cores busy during a step, so the event loop's CPU per token adds to every
step; throughput drifts 10-20% with the machine, this figure by ~0.05 ms between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import yaml
from harness import (
    OUT_DIR,
    REPO,
    async_client,
    derived_config,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--config", type=Path,
                        default=REPO / "configs" / "smollm2-135m-instruct.yaml")
    parser.add_argument("serve_args", nargs="*", help="passed on to `lokal serve`")
    args = parser.parse_args()

    out = OUT_DIR / "loop_cpu"
    config = derived_config(args.config, args.threads, None, out / "lokal.yaml")
    server = lokal_server(REPO, config, free_port(), out / "lokal.log")
    server.command += args.serve_args
    model = yaml.safe_load(config.read_text(encoding="utf-8"))["id"]
    with server.running():
        pid = server.pid
        assert pid is not None
        asyncio.run(drive(server.base_url, model, 1, 1))  # warm-up, not measured
        before = thread_cpu(pid)
        tokens = asyncio.run(drive(server.base_url, model, args.requests, args.clients))
        after = thread_cpu(pid)
    print(f"{tokens} streamed tokens, {args.clients} client(s); the two busiest threads are "
          "llama.cpp's (the engine thread and its OpenMP worker)")
    for tid, seconds in sorted(after.items(), key=lambda kv: -(kv[1] - before.get(kv[0], 0))):
        used = seconds - before.get(tid, 0.0)
        if used >= 0.01:
            role = "main thread: the event loop" if tid == pid else "thread"
            print(f"  thread {tid} ({role}): {used:.2f} s CPU = {used / tokens * 1000:.3f} ms "
                  "per token")


if __name__ == "__main__":
    main()
