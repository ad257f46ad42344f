"""Single-stream benchmark: lokal's streaming chat over HTTP against llama-cpp-python's
in-process generation on the same prompt, GGUF, threads, context and max_tokens (greedy).

    .venv/bin/python bench/single_stream.py [--reps 5] [--max-tokens 128] [--lokal-ref HEAD]

Prints time to first token and tokens/s (medians over the repetitions) for three paths:
lokal over HTTP, `Llama.create_chat_completion(stream=True)` and the bare `Llama.generate` loop
(the engine's ceiling). Every repetition uses a new system-prompt nonce so no path reuses the
previous repetition's KV cache; the paths run interleaved so background load hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from harness import (
    OUT_DIR,
    REPO,
    CpuMeter,
    add_quiet_options,
    async_client,
    derived_config,
    export_lokal,
    fmt,
    free_port,
    import_root,
    lokal_code_state,
    lokal_server,
    machine_facts,
    median,
    ratio,
    stop_on_sigterm,
    stream_chat,
    wait_until_quiet,
)

USER_PROMPT = ("Write a long, detailed story about a lighthouse keeper who finds a map in a "
               "bottle. Describe the island, the weather and every step of the journey.")


@dataclass
class Run:
    """One repetition of one path."""

    ttft_s: float
    tokens: int
    last_token_s: float  # from request start to the last token

    @property
    def decode_tps(self) -> float:
        decode_time = self.last_token_s - self.ttft_s
        return (self.tokens - 1) / decode_time if self.tokens > 1 and decode_time > 0 \
            else float("nan")

    @property
    def e2e_tps(self) -> float:
        return self.tokens / self.last_token_s if self.last_token_s > 0 else float("nan")


def messages_for(rep: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"Session {rep:04d}. You are a helpful storyteller."},
            {"role": "user", "content": USER_PROMPT}]


def time_lokal(base_url: str, model: str, rep: int, max_tokens: int) -> Run:
    async def once() -> Run:
        async with async_client(1, 600.0) as client:
            result = await stream_chat(client, base_url, {
                "model": model, "messages": messages_for(rep), "max_tokens": max_tokens,
                "temperature": 0, "seed": 1234, "stream_options": {"include_usage": True}})
        if result.error:
            raise RuntimeError(f"lokal request failed: {result.error}")
        return Run(result.ttft, result.tokens, result.content_times[-1] - result.started)

    return asyncio.run(once())


def time_iterator(tokens: Callable[[], Iterator[object]]) -> Run:
    started = time.perf_counter()
    first = last = float("nan")
    count = 0
    for _ in tokens():
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1
    return Run(first - started, count, last - started)


def in_process_paths(llm: Any, max_tokens: int) -> dict[str, Callable[[int], Run]]:
    """The two llama-cpp-python paths, each starting from an empty KV cache."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def piece(token: int) -> str:
        return bytes(llm.detokenize([token], special=True)).decode(errors="replace")

    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                    eos_token=piece(llm.token_eos()),
                                    bos_token=piece(llm.token_bos()))
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def chat(rep: int) -> Run:
        def chunks() -> Iterator[object]:
            for chunk in llm.create_chat_completion(messages=messages_for(rep),
                                                    max_tokens=max_tokens, temperature=0.0,
                                                    seed=1234, stream=True):
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    yield chunk

        llm.reset()
        return time_iterator(chunks)

    def generate(rep: int) -> Run:
        rendered = formatter(messages=cast(Any, messages_for(rep)))
        prompt = llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special,
                              special=True)

        def tokens() -> Iterator[object]:
            for n, token in enumerate(llm.generate(prompt, temp=0.0)):
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    return
                yield token
                if n + 1 >= max_tokens:
                    return

        llm.reset()
        return time_iterator(tokens)

    return {"llama-cpp-python create_chat_completion(stream=True)": chat,
            "llama-cpp-python Llama.generate (engine loop)": generate}


def summarize(runs: list[Run]) -> dict[str, float]:
    return {"ttft_ms": median([r.ttft_s for r in runs]) * 1000,
            "decode_tps": median([r.decode_tps for r in runs]),
            "e2e_tps": median([r.e2e_tps for r in runs]),
            "tokens": median([float(r.tokens) for r in runs])}


def report(results: dict[str, list[Run]], facts: dict[str, str]) -> str:
    lines = [f"- date: {facts['date']}", f"- CPU: {facts['cpu']}, {facts['cores']} cores",
             f"- load average (1/5/15 min) before: {facts['load_average']}, after: "
             f"{facts['load_average_after']}",
             f"- lokal: {facts['lokal']}",
             f"- llama-cpp-python {facts['llama_cpp_python']}; {facts['system_info'].strip()}",
             f"- model: {facts['gguf']}", "",
             f"Single stream, {facts['reps']} repetitions, medians; max_tokens "
             f"{facts['max_tokens']}, temperature 0, threads {facts['threads']}, "
             f"n_ctx {facts['context']}, n_batch {facts['n_batch']}; other processes used "
             f"{facts['foreign_cores']} cores meanwhile.", "",
             "| path | TTFT p50 (ms) | decode tok/s | end-to-end tok/s | completion tokens |",
             "|---|---:|---:|---:|---:|"]
    summary = {name: summarize(runs) for name, runs in results.items()}
    for name, s in summary.items():
        lines.append(f"| {name} | {fmt(s['ttft_ms'])} | {fmt(s['decode_tps'])} | "
                     f"{fmt(s['e2e_tps'])} | {s['tokens']:.0f} |")
    lokal = summary["lokal (HTTP, streaming chat)"]
    lines += ["", "| lokal against | decode tok/s ratio | end-to-end tok/s ratio | TTFT ratio |",
              "|---|---:|---:|---:|"]
    for name, s in summary.items():
        if not name.startswith("lokal"):
            lines.append(f"| {name} | {ratio(lokal['decode_tps'], s['decode_tps'])} | "
                         f"{ratio(lokal['e2e_tps'], s['e2e_tps'])} | "
                         f"{ratio(lokal['ttft_ms'], s['ttft_ms'])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per path (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every path (default: the YAML's, else all cores)")
    parser.add_argument("--config", type=Path, default=None,
                        help="model YAML (default: the measured lokal's bundled SmolLM2)")
    parser.add_argument("--lokal-ref", default=None,
                        help="measure this git commit of lokal (exported to bench/.cache) "
                             "instead of the work tree")
    add_quiet_options(parser, "first", wait_s=30.0)
    args = parser.parse_args()
    stop_on_sigterm()
    if not 1 <= args.reps <= 100 or not 1 <= args.max_tokens <= 4096:
        parser.error("--reps must be 1..100 and --max-tokens 1..4096")

    lokal_dir = export_lokal(args.lokal_ref) if args.lokal_ref else REPO
    sys.path.insert(0, str(import_root(lokal_dir)))  # the measured lokal's spec
    config = args.config or lokal_dir / "configs" / "smollm2-135m-instruct.yaml"
    spec_data = yaml.safe_load(config.read_text(encoding="utf-8"))
    opts = spec_data.get("llamacpp") or {}
    threads = args.threads or opts.get("n_threads") or os.cpu_count() or 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    config = derived_config(config, threads, None, OUT_DIR / "single_stream.yaml")
    from lokal.backends.spec import ModelSpec

    spec = ModelSpec.from_yaml(config)
    facts = {**machine_facts(), "lokal": lokal_code_state(lokal_dir, args.lokal_ref),
             "reps": str(args.reps), "max_tokens": str(args.max_tokens),
             "threads": str(threads), "context": str(spec.context_length),
             "n_batch": str(spec.llamacpp.n_batch), "gguf": str(spec.gguf_path())}

    import llama_cpp

    facts["llama_cpp_python"] = llama_cpp.__version__
    llm = llama_cpp.Llama(model_path=str(spec.gguf_path()), n_ctx=spec.context_length,
                          n_batch=spec.llamacpp.n_batch, n_threads=threads, verbose=False)
    facts["system_info"] = llama_cpp.llama_print_system_info().decode()
    paths = in_process_paths(llm, args.max_tokens)
    results: dict[str, list[Run]] = {"lokal (HTTP, streaming chat)": []}
    results.update({name: [] for name in paths})
    port = free_port()
    server = lokal_server(lokal_dir, config, port, OUT_DIR / "single_stream-lokal.log")
    print(f"lokal: {facts['lokal']}; load average before: {facts['load_average']}", flush=True)
    with server.running():
        base_url = server.base_url
        time_lokal(base_url, spec.id, 9999, 8)  # warm-up: first-request costs are not measured
        for path in paths.values():
            path(9999)
        wait_until_quiet(args.quiet_cores, args.quiet_wait)
        meter = CpuMeter([pid for pid in (server.pid,) if pid is not None])
        for rep in range(args.reps):
            results["lokal (HTTP, streaming chat)"].append(
                time_lokal(base_url, spec.id, rep, args.max_tokens))
            for name, path in paths.items():
                results[name].append(path(rep))
            print(f"  rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{r[-1].tokens} tok {r[-1].ttft_s * 1000:.0f} ms" for r in results.values()),
                flush=True)
        facts["foreign_cores"] = f"{meter.foreign_cores():.2f}"
    facts["load_average_after"] = machine_facts()["load_average"]
    text = report(results, facts)
    print()
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT_DIR / f"single_stream-{stamp}.json").write_text(json.dumps(
        {"facts": facts, "runs": {k: [asdict(r) for r in v] for k, v in results.items()}},
        indent=2), encoding="utf-8")
    (OUT_DIR / f"single_stream-{stamp}.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
