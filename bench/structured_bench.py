"""What a JSON-schema constraint costs on the llama.cpp engine: tokens/s of streaming chats with
and without `response_format: json_schema`, at 1 and 8 concurrent streams, on one lokal server,
plain and constrained rounds interleaved; and the time the llguidance mask takes per token,
timed inside the engine thread (in-process, the same model and settings).

    .venv/bin/python bench/structured_bench.py [--reps 3] [--tokens 128]

Writes bench/out/structured-<time>/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    OUT_DIR,
    REPO,
    async_client,
    derived_config,
    free_port,
    git,
    lokal_server,
    machine_facts,
    ratio,
    stream_chat,
)

sys.path.insert(0, str(REPO))

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title", "story"],
          "properties": {"title": {"type": "string", "maxLength": 60},
                         "mood": {"enum": ["happy", "sad", "calm"]},
                         "rating": {"type": "number", "minimum": 0, "maximum": 10},
                         "story": {"type": "string", "minLength": 2000, "maxLength": 4000}}}
# Both kinds of request run to max_tokens: the schema's story is longer than that, and the
# end-of-text tokens are banned, so that tokens/s compares full batches, not ragged tails.
NO_EOS = {"0": -100, "2": -100}
PROMPT = [{"role": "user", "content": "Write a long story about a cat, as JSON."}]


def body(model: str, tokens: int, constrained: bool, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "max_tokens": tokens, "temperature": 0.7,
                           "seed": seed, "messages": PROMPT, "logit_bias": NO_EOS,
                           "stream_options": {"include_usage": True}}
    if constrained:
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "story", "schema": SCHEMA}}
    return out


async def level(base_url: str, model: str, streams: int, tokens: int,
                constrained: bool, rep: int) -> tuple[float, int, list[float]]:
    """(wall seconds, tokens, TTFTs) of `streams` concurrent requests."""
    async with async_client(streams, 600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(
            stream_chat(client, base_url, body(model, tokens, constrained, 100 * rep + i))
            for i in range(streams)))
        wall = time.perf_counter() - started
    bad = [r.error for r in results if r.error]
    if bad:
        raise RuntimeError(bad[0])
    return wall, sum(r.tokens for r in results), [r.ttft for r in results]


def mask_times(config: Path, tokens: int, streams: int) -> list[float]:
    """Seconds per apply_mask call while `streams` constrained generations run in-process."""
    import lokal.backends.llamacpp.scheduler as scheduler
    from lokal.backends.base import (
        ChatMessage,
        ChatPrompt,
        Constraint,
        GenerationRequest,
        SamplingParams,
    )
    from lokal.backends.llamacpp.backend import LlamaCppBackend
    from lokal.backends.spec import ModelSpec

    times: list[float] = []
    real = scheduler.apply_mask

    def timed(matcher: Any, logits: Any) -> None:
        began = time.perf_counter()
        real(matcher, logits)
        times.append(time.perf_counter() - began)

    scheduler.apply_mask = timed  # type: ignore[assignment]

    async def run() -> None:
        engine = LlamaCppBackend(ModelSpec.from_yaml(config), reason="bench")
        await engine.start()
        try:
            async def one(i: int) -> None:
                request = GenerationRequest(
                    f"r{i}", ChatPrompt((ChatMessage("user", PROMPT[0]["content"]),)),
                    SamplingParams(temperature=0.7, seed=i, max_tokens=tokens,
                                   logit_bias={0: -100.0, 2: -100.0}),
                    constraint=Constraint("json_schema", schema=SCHEMA))
                async for _ in engine.generate(request):
                    pass
            await asyncio.gather(*(one(i) for i in range(streams)))
        finally:
            await engine.stop()

    asyncio.run(run())
    scheduler.apply_mask = real
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = OUT_DIR / f"structured-{time.strftime('%Y%m%d-%H%M%S')}"
    config = derived_config(REPO / "configs" / "smollm2-135m-instruct.yaml", args.threads, 8,
                            work / "model.yaml")
    model = "smollm2-135m-instruct"
    port = free_port()
    totals: dict[tuple[int, bool], list[tuple[float, int, list[float]]]] = {}
    with lokal_server(REPO, config, port, work / "lokal.log").running() as server:
        asyncio.run(level(server.base_url, model, 1, 8, True, 0))  # warm-up: the trie
        for rep in range(args.reps):
            for streams in (1, 8):
                for constrained in ((False, True) if rep % 2 == 0 else (True, False)):
                    totals.setdefault((streams, constrained), []).append(asyncio.run(
                        level(server.base_url, model, streams, args.tokens, constrained, rep)))
    masks = mask_times(config, args.tokens, 8)
    counts = {key: sum(t for _, t, _ in runs) for key, runs in totals.items()}
    lines = ["| fact | value |", "|---|---|",
             *(f"| {k} | {v} |" for k, v in machine_facts().items()),
             f"| lokal | {git('rev-parse', '--short', 'HEAD')} |",
             f"| model | SmolLM2-135M-Instruct Q4_1, 8 slots, {args.threads} threads |",
             f"| requests | {args.tokens} tokens max, temperature 0.7, end-of-text banned, "
             f"{args.reps} reps, plain and constrained interleaved |",
             f"| tokens counted | {counts} |", "",
             "| streams | plain tok/s | constrained tok/s | constrained / plain | "
             "TTFT median plain / constrained (s) |", "|---|---|---|---|---|"]
    for streams in (1, 8):
        rate = {}
        ttft = {}
        for constrained in (False, True):
            runs = totals[(streams, constrained)]
            rate[constrained] = sum(t for _, t, _ in runs) / sum(w for w, _, _ in runs)
            ttft[constrained] = statistics.median(x for _, _, ts in runs for x in ts)
        lines.append(f"| {streams} | {rate[False]:.1f} | {rate[True]:.1f} | "
                     f"{ratio(rate[True], rate[False])} | {ttft[False]:.3f} / "
                     f"{ttft[True]:.3f} |")
    ordered = sorted(masks)
    lines += ["", f"Mask per token (llguidance mask + applying it to the logits, in the engine "
              f"thread, 8 constrained streams): {len(masks)} calls, median "
              f"{statistics.median(masks) * 1e6:.0f} us, p95 "
              f"{ordered[int(0.95 * (len(ordered) - 1))] * 1e6:.0f} us, max "
              f"{ordered[-1] * 1e6:.0f} us."]
    text = "\n".join(lines)
    print(text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
