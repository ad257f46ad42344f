"""Disconnects stop work; concurrent streams all complete; no request ends another's stream."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from tests.conftest import MODEL, Server

# Greedy continuation of a counting prompt runs to the token limit instead of stopping.
ENDLESS = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "temperature": 0,
           "max_tokens": 6000, "stream": True}


def test_endless_prompt_really_runs_long(client: openai.OpenAI) -> None:
    """Guards the next test: the dropped stream would occupy the engine for a long time."""
    out = client.completions.create(model=MODEL, prompt=ENDLESS["prompt"], temperature=0,
                                    max_tokens=200)
    assert out.choices[0].finish_reason == "length"


def test_dropped_stream_stops_generation(server: Server, http: httpx.Client) -> None:
    with http.stream("POST", "/v1/completions", json=ENDLESS) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(10)]
        assert any(line.startswith("data: ") for line in got)
    # The client is gone. Had generation gone on, these 6000 tokens would hold the engine for
    # far longer than this request's 20 s timeout (a correctness bound, not a speed target).
    dropped_at = time.monotonic()
    r = http.post("/v1/chat/completions", timeout=20,
                  json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4})
    assert r.status_code == 200, r.text
    deadline = dropped_at + 20
    while "cancelled after" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "cancelled after" in server.log_text()


def test_dropped_non_streaming_request_stops_generation(server: Server,
                                                        http: httpx.Client) -> None:
    body = {**ENDLESS, "stream": False}
    before = server.log_text().count("cancelled after")
    try:
        http.post("/v1/completions", json=body, timeout=1.5)
    except httpx.ReadTimeout:
        pass
    dropped_at = time.monotonic()
    r = http.post("/v1/completions", timeout=20,
                  json={"model": MODEL, "prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 200, r.text
    # Wait for the cancellation itself, not for the machine to be fast: on a loaded machine the
    # short request (batched beside the dropped one) can finish before the disconnect is seen.
    # The 6000 dropped tokens run far longer than 20 s, so no cancellation fails this.
    deadline = dropped_at + 20
    while server.log_text().count("cancelled after") <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_text().count("cancelled after") > before


def test_eight_concurrent_streams_all_complete(server: Server) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model=MODEL, max_tokens=24, seed=i, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"Tell me fact number {i} about the sea."}],
        )
        text, finish, tokens = "", None, 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return text, finish, tokens

    async def main() -> list[tuple[str, str | None, int]]:
        async with openai.AsyncOpenAI(base_url=server.v1, api_key="x", max_retries=0,
                                      timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    results = asyncio.run(main())
    assert len(results) == 8
    for text, finish, tokens in results:
        assert finish in ("stop", "length")
        assert text
        assert 0 < tokens <= 24
