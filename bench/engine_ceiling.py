"""The engine's own ceiling for serve_bench's workload: llama.cpp's llama-batched-bench (built
from the llama.cpp vendored in the llama-cpp-python sdist lokal runs on, like llama-server), on
the same GGUF, threads, slots and context per slot, with no HTTP, no server and no sampling.

    .venv/bin/python bench/engine_ceiling.py [--runs 5] [--clients 1,8] [--npp 21] [--ntg 128]

Each run is a fresh process (one process start of the same binary runs 5-10% faster or slower
than the next, so the runs give the spread). Per batch size B it reports:
- decode-only tokens/s (llama-batched-bench's S_TG): B sequences decoding one token a step;
  what a server would reach if it never prefilled, sampled, or streamed anything;
- completion tokens/s over the whole cycle, B x ntg / (prefill + decode time): the same
  figure serve_bench reports (completion tokens per second of wall time) for B clients that
  start together and each prefill `npp` tokens. serve_bench's chat prompts have ~51 tokens, of
  which ~30 (the template's system prompt and "Write a long story about") stay cached in a
  slot, so ~21 are prefilled per request: the default --npp.
Compare with a serve_bench run made right before or after on the same machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

from anchors import llama_cpp_python_version, llama_cpp_tool
from harness import REPO

ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|"
                 r"\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|")


def parse(output: str) -> dict[int, tuple[float, float]]:
    """{B: (decode-only tok/s, completion tok/s over prefill + decode)} from the table."""
    found: dict[int, tuple[float, float]] = {}
    for line in output.splitlines():
        match = ROW.match(line.strip())
        if match:
            _pp, tg, b = (int(match.group(i)) for i in (1, 2, 3))
            t_pp, s_tg, t_tg = (float(match.group(i)) for i in (5, 8, 7))
            found[b] = (s_tg, b * tg / (t_pp + t_tg))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", default="1,8", help="batch sizes (parallel sequences)")
    parser.add_argument("--npp", type=int, default=21, help="prompt tokens each sequence prefills")
    parser.add_argument("--ntg", type=int, default=128, help="tokens each sequence generates")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--context", type=int, default=8192, help="context per slot")
    parser.add_argument("--build-jobs", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec

    gguf = str(ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path())
    binary = llama_cpp_tool(llama_cpp_python_version(), args.build_jobs, "llama-batched-bench")
    command = [str(binary), "-m", gguf, "-c", str(args.slots * args.context),
               "-npp", str(args.npp), "-ntg", str(args.ntg), "-npl", args.clients,
               "-t", str(args.threads), "-tb", str(args.threads)]
    print(" ".join([*command[:1], "-m", os.path.basename(gguf), *command[3:]]), flush=True)
    runs: dict[int, list[tuple[float, float]]] = {}
    for run in range(args.runs):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"llama-batched-bench failed:\n{done.stderr[-2000:]}")
        for b, figures in sorted(parse(done.stdout + done.stderr).items()):
            runs.setdefault(b, []).append(figures)
            print(f"run {run + 1}: B={b}: decode-only {figures[0]:.1f} tok/s, "
                  f"whole cycle {figures[1]:.1f} completion tok/s", flush=True)
    print("\n| sequences | decode-only tok/s, median (min-max) | whole cycle, median (min-max) |")
    print("|---:|---|---|")
    for b, figures in sorted(runs.items()):
        cells = []
        for values in ([f[0] for f in figures], [f[1] for f in figures]):
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {b} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
