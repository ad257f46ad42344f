"""The llama.cpp scheduler under load: batching, slots, queue, cancellation and prefix reuse."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec
from tests.conftest import MODEL, Server, start_server, stop_server

# Properties of lokal's own llama.cpp scheduler (slots, its queue, prefill interleaving); vLLM's
# scheduler is vLLM's, and the shared contract tests cover it.
pytestmark = pytest.mark.backends("llamacpp")

TOPICS = ["the sea", "cats", "rockets", "bread", "music", "trees", "winter", "chess"]


def _ask(i: int) -> dict[str, object]:
    return {"model": MODEL, "temperature": 0, "max_tokens": 32,
            "messages": [{"role": "user", "content": f"Write a paragraph about {TOPICS[i]}."}]}


def test_concurrent_greedy_streams_match_their_solo_text(server: Server) -> None:
    """Batched kernels may round differently from a lone decode; count how often that changes
    a greedy text and hold it to a bound, rather than pretending it never happens."""

    async def main() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=server.v1, timeout=300) as c:
            async def one(i: int) -> str:
                r = await c.post("/chat/completions", json=_ask(i))
                assert r.status_code == 200, r.text
                return str(r.json()["choices"][0]["message"]["content"])

            alone = [await one(i) for i in range(8)]
            together = await asyncio.gather(*(one(i) for i in range(8)))
            return alone, list(together)

    alone, together = asyncio.run(main())
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    assert same >= 7, f"only {same}/8 concurrent greedy texts matched their solo run"
    # Where they differ, they share a real prefix first (a late rounding flip, not garbage).
    for a, b in zip(alone, together, strict=True):
        if a != b:
            prefix = len(os.path.commonprefix([a, b]))  # noqa: RUF071 (strings, not paths)
            assert prefix >= 8, (a, b)


def test_dropped_clients_free_every_slot(server: Server, client: openai.OpenAI) -> None:
    before = server.log_text().count("cancelled after")

    async def drop(c: httpx.AsyncClient, i: int) -> None:
        body = {**_ask(i % 8), "max_tokens": 2000, "stream": True, "temperature": 1.0, "seed": i}
        async with c.stream("POST", "/chat/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen == 2:
                        return

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.v1, timeout=300) as c:
            await asyncio.gather(*(drop(c, i) for i in range(16)))

    asyncio.run(main())
    # n=8 needs all 8 slots at once: it can only run if every dropped stream released its slot.
    # The waits have room for a busy machine; the log count, not a clock, is what fails a
    # server that kept a dropped stream going.
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=8,
        timeout=180)
    assert len(out.choices) == 8
    deadline = time.monotonic() + 120
    while server.log_text().count("cancelled after") - before < 16:
        assert time.monotonic() < deadline, "not every dropped stream was cancelled"
        time.sleep(0.1)


def test_second_turn_reuses_the_first_turns_cache(client: openai.OpenAI) -> None:
    history = [
        {"role": "system", "content": "You are a patient teacher. " * 30},
        {"role": "user", "content": "Explain what a prime number is."},
    ]
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=40,
                                           temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "Give me an example."}]
    second = client.chat.completions.create(model=MODEL, messages=history, max_tokens=8,
                                            temperature=0)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert first.usage is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= first.usage.prompt_tokens // 128 * 128 > 0


def test_long_prompt_does_not_stall_running_streams(server: Server) -> None:
    """While a ~4,000-token prompt is processed (about 30 prompt chunks), a running stream
    keeps getting a token every step; a scheduler that ran the prompt in one go would give
    it none. Counted in tokens, not seconds."""
    long_prompt = "Summarise this text. " + "The cat sat on the warm mat by the door. " * 380

    async def main() -> tuple[int, int]:
        timeline: list[str] = []
        async with httpx.AsyncClient(base_url=server.v1, timeout=600) as c:
            async def runner() -> None:
                body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "temperature": 0,
                        "max_tokens": 3000, "stream": True}
                async with c.stream("POST", "/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            timeline.append("a")
                        if "long-done" in timeline:
                            return

            async def long_one() -> int:
                while timeline.count("a") < 5:
                    await asyncio.sleep(0.01)
                timeline.append("long-sent")
                body = {"model": MODEL, "prompt": long_prompt, "max_tokens": 1, "stream": True,
                        "stream_options": {"include_usage": True}}
                prompt_tokens = 0
                async with c.stream("POST", "/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            event = json.loads(line[6:])
                            if event["choices"] and "long-first" not in timeline:
                                timeline.append("long-first")
                            if event.get("usage"):
                                prompt_tokens = event["usage"]["prompt_tokens"]
                timeline.append("long-done")
                return prompt_tokens

            _, prompt_tokens = await asyncio.gather(runner(), long_one())
        start, end = timeline.index("long-sent"), timeline.index("long-first")
        return timeline[start:end].count("a"), prompt_tokens

    during, prompt_tokens = asyncio.run(main())
    chunks = prompt_tokens // 128
    assert chunks >= 25
    assert during >= chunks // 2, f"running stream got {during} tokens over {chunks} chunks"


@pytest.fixture()
def one_slot_server(tmp_path: Path) -> Server:
    gguf = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    cfg = tmp_path / "one-slot.yaml"
    cfg.write_text(f"id: {MODEL}\ncontext_length: 2048\ngguf:\n  path: {gguf}\n"
                   "llamacpp:\n  parallel: 1\n  max_waiting: 1\n")
    return start_server(tmp_path, "--config", str(cfg))


def test_full_queue_is_429_with_retry_after(one_slot_server: Server) -> None:
    """One slot busy, room for one waiter: of two more requests exactly one is refused with 429
    at once, and the other is served once the slot frees."""
    srv = one_slot_server
    body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 1500}

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.v1, timeout=120) as c:
            async with c.stream("POST", "/completions", json={**body, "stream": True}) as run:
                assert run.status_code == 200
                lines = run.aiter_lines()
                await anext(lines)
                short = {**body, "max_tokens": 2}
                tasks = [asyncio.create_task(c.post("/completions", json=short))
                         for _ in range(2)]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                refused = done.pop().result()
            # The running stream is closed: its slot frees and the waiter is served.
            served = await next(t for t in tasks if not t.done() or t.result() is not refused)
            return refused, served

    try:
        refused, served = asyncio.run(main())
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["message"]
        assert served.status_code == 200, served.text
    finally:
        stop_server(srv)


def test_n_greater_than_slots_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={**_ask(0), "n": 9})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "n"
