"""Disconnects stop work; concurrent streams all complete; no request ends another's stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai

from tests.conftest import MODEL, Server
from tests.e2e.test_metrics import scrape, value

# Greedy continuation of a counting prompt runs to the token limit instead of stopping.
ENDLESS = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "temperature": 0,
           "max_tokens": 6000, "stream": True}

# Waits on events (a log line, a gauge, a reply) have this much room: two shared CPUs with a
# second suite beside this one make the engine several times slower than alone. None of them
# is what fails a broken server: a generation that goes on is never logged as cancelled.
WAIT = 120


def test_endless_prompt_really_runs_long(client: openai.OpenAI) -> None:
    """Guards the next test: the dropped stream would occupy the engine for a long time."""
    out = client.completions.create(model=MODEL, prompt=ENDLESS["prompt"], temperature=0,
                                    max_tokens=200)
    assert out.choices[0].finish_reason == "length"


def _running(http: httpx.Client) -> float:
    return value(scrape(http), "lokal_requests_running", model=MODEL)


def _cancelled_since(server: Server, before: int) -> bool:
    """Waits until the server logs a cancellation after the `before` it had logged."""
    deadline = time.monotonic() + WAIT
    while server.log_text().count("cancelled after") <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.log_text().count("cancelled after") > before


def test_dropped_stream_stops_generation(server: Server, http: httpx.Client) -> None:
    before = server.log_text().count("cancelled after")
    with http.stream("POST", "/v1/completions", json=ENDLESS) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(10)]
        assert any(line.startswith("data: ") for line in got)
    # The client is gone; the server still answers another, and stops the dropped one.
    r = http.post("/v1/chat/completions", timeout=WAIT,
                  json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert _cancelled_since(server, before)


def test_dropped_non_streaming_request_stops_generation(server: Server,
                                                        http: httpx.Client) -> None:
    body = json.dumps({**ENDLESS, "stream": False}).encode()
    port = int(server.base_url.rsplit(":", 1)[1])
    deadline = time.monotonic() + WAIT
    while _running(http) > 0:  # the last test's abort may still be under way
        assert time.monotonic() < deadline, "the engine never went idle"
        time.sleep(0.1)
    before = server.log_text().count("cancelled after")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        # Leave once the engine runs it (not after a fixed time, which on a busy machine can
        # pass before the request is even read): the 6000 tokens outlast any wait here.
        deadline = time.monotonic() + WAIT
        while _running(http) < 1:
            assert time.monotonic() < deadline, "the request never started running"
            time.sleep(0.1)
    r = http.post("/v1/completions", timeout=WAIT,
                  json={"model": MODEL, "prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 200, r.text
    # Wait for the cancellation itself, not for the machine to be fast: on a loaded machine the
    # short request (batched beside the dropped one) can finish before the disconnect is seen.
    assert _cancelled_since(server, before)


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
