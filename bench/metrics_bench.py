"""/metrics latency while every slot decodes: what an inference router's endpoint picker sees
when it polls a lokal pod (llm-d polls every 50 ms and counts a pod whose metrics go stale as
saturated). lokal on the default model, 8 slots, 2 threads; first idle scrapes, then scrapes while
8 streaming requests decode, each scrape timed from the client; the vllm:* gauges read during
the load are recorded too. Writes bench/out/metrics-<time>/results.md.
Run: .venv/bin/python bench/metrics_bench.py [--scrapes 300]
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx
from harness import (
    OUT_DIR,
    REPO,
    derived_config,
    free_port,
    git,
    lokal_server,
    machine_facts,
    percentile,
)

from lokal.backends.spec import DEFAULT_CONFIG

STREAMS = 8
PROMPT = "Write a long story about a lighthouse keeper and the sea. " * 4


def scrape_times(base: str, count: int, pause: float) -> tuple[list[float], list[str]]:
    took: list[float] = []
    texts: list[str] = []
    with httpx.Client(base_url=base, timeout=10) as http:
        for _ in range(count):
            began = time.perf_counter()
            r = http.get("/metrics")
            took.append(time.perf_counter() - began)
            r.raise_for_status()
            texts.append(r.text)
            time.sleep(pause)
    return took, texts


def gauge(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between scrapes")
    args = parser.parse_args()
    out = OUT_DIR / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}"
    config = derived_config(DEFAULT_CONFIG, threads=2, parallel=STREAMS, dest=out / "smol.yaml")
    port = free_port()
    server = lokal_server(REPO, config, port, out / "lokal.log")
    rows: list[str] = []
    with server.running():
        base = server.base_url
        idle, _ = scrape_times(base, args.scrapes // 3, args.pause)
        stop = threading.Event()
        tokens = [0]

        def client() -> None:
            with httpx.Client(base_url=base, timeout=300) as http:
                while not stop.is_set():
                    body = {"model": "smollm2-135m-instruct", "prompt": PROMPT,
                            "max_tokens": 400, "temperature": 0.8, "stream": True}
                    with http.stream("POST", "/v1/completions", json=body) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: {"):
                                tokens[0] += 1
                            if stop.is_set():
                                break

        threads = [threading.Thread(target=client) for _ in range(STREAMS)]
        for t in threads:
            t.start()
        time.sleep(3)  # every stream decoding
        began = time.perf_counter()
        busy, texts = scrape_times(base, args.scrapes, args.pause)
        elapsed = time.perf_counter() - began
        streamed = tokens[0]
        stop.set()
        for t in threads:
            t.join()
    running = [gauge(t, "vllm:num_requests_running") for t in texts]
    kv = [gauge(t, "vllm:kv_cache_usage_perc") for t in texts]
    facts = machine_facts()
    rows.append(f"lokal {git('rev-parse', '--short', 'HEAD')}; "
                + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    rows.append("")
    rows.append("| state | scrapes | p50 ms | p99 ms | max ms |")
    rows.append("|---|---|---|---|---|")
    for name, values in (("idle", idle), (f"{STREAMS} streams decoding", busy)):
        rows.append(f"| {name} | {len(values)} | {percentile(values, 50) * 1e3:.1f} | "
                    f"{percentile(values, 99) * 1e3:.1f} | {max(values) * 1e3:.1f} |")
    rows.append("")
    rows.append(f"During the load: vllm:num_requests_running median "
                f"{percentile(running, 50):.0f} (min {min(running):.0f}), "
                f"vllm:kv_cache_usage_perc median {percentile(kv, 50):.3f}; "
                f"{streamed / elapsed:.0f} streamed chunks/s over {elapsed:.1f} s.")
    text = "\n".join(rows) + "\n"
    (out / "results.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
