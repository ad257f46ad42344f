"""What serve_generation() asks of the pool and hands the engine, over a scripted engine: one
lease per request, the prompt's size from the engine's first chunk (nothing tokenizes it a
second time), and the request timeout as the job's deadline, whose passing is a 504."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from lokal.backends.base import Chunk, GenerationRequest, TextPrompt, Usage
from lokal.backends.errors import DeadlineExceeded
from lokal.server.generation import start
from lokal.server.settings import ServerSettings
from tests.server.scripted import ScriptedBackend, scripted_client
from tests.server.test_generation import CHAT, _client, _events, _pool, _running

# -- one lease and one prompt count per request ----------------------------------------------


class Counting(ScriptedBackend):
    """Counts the leases taken on it (through the pool) and count_tokens calls."""

    counted = 0

    async def count_tokens(self, request: GenerationRequest) -> int:
        self.counted += 1
        return await super().count_tokens(request)


def _count_leases(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models leased from now on, one entry per lease (pool.lease() acquires too)."""
    pool = _pool(client)
    leased: list[str] = []
    acquire = pool.acquire

    async def counted(model: str, *args: Any, **kwargs: Any) -> Any:
        leased.append(model)
        return await acquire(model, *args, **kwargs)

    monkeypatch.setattr(pool, "acquire", counted)
    return leased


def test_a_streamed_anthropic_message_counts_its_prompt_once_from_the_first_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Counting([Chunk(text="hi"), Chunk(finish_reason="stop", usage=Usage(42, 1))])
    with _client(backend) as client:
        leased = _count_leases(client, monkeypatch)
        r = client.post("/v1/messages", json={
            "model": "scripted", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        start = next(e for e in _events(r) if e["type"] == "message_start")
        assert start["message"]["usage"]["input_tokens"] == 42  # the engine's first chunk
        assert backend.counted == 0  # nothing tokenized the prompt beside the engine
        assert len(backend.requests) == 1 and leased == ["scripted"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_an_ollama_request_leases_its_model_once(path: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Counting([Chunk(text="hi"), Chunk(finish_reason="stop", usage=Usage(3, 1))])
    with _client(backend) as client:
        leased = _count_leases(client, monkeypatch)
        body: dict[str, Any] = {"model": "scripted", "stream": False}
        body |= {"messages": [{"role": "user", "content": "hi"}]} if path == "/api/chat" \
            else {"prompt": "hi"}
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["load_duration"] >= 0
        assert leased == ["scripted"]
        assert _running(client) == 0


# -- the request's deadline travels with the job ---------------------------------------------


@pytest.mark.parametrize("timeout", [7.0, 0.0])
def test_the_request_timeout_becomes_the_jobs_deadline(timeout: float) -> None:
    backend = ScriptedBackend([Chunk(text="hi"), Chunk(finish_reason="stop", usage=Usage(1, 1))])
    client = scripted_client(backend, ServerSettings(request_timeout=timeout))
    try:
        before = time.perf_counter()
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        after = time.perf_counter()
    finally:
        client.__exit__(None, None, None)
    deadline = backend.requests[0].deadline
    if not timeout:
        assert deadline is None  # no limit: the engine never ends the request for time
        return
    assert deadline is not None and deadline.seconds == timeout
    assert before + timeout - 1 <= deadline.at <= after + timeout  # from the request's arrival


TIMEOUT_MESSAGE = ("The request took longer than this server's limit of 7 seconds "
                   "(LOKAL_REQUEST_TIMEOUT).")


def test_an_engine_deadline_before_the_first_chunk_is_a_plain_504() -> None:
    backend = ScriptedBackend([DeadlineExceeded(7.0)])
    with _client(backend) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.status_code == 504 and "data:" not in r.text
        assert r.json()["error"] == {"message": TIMEOUT_MESSAGE, "type": "server_error",
                                     "param": None, "code": "timeout"}
        assert _running(client) == 0


def test_an_engine_deadline_mid_stream_is_one_timeout_event() -> None:
    backend = ScriptedBackend([Chunk(0, "par"), DeadlineExceeded(7.0)])
    with _client(backend) as client:
        events = _events(client.post("/v1/chat/completions", json={**CHAT, "stream": True}))
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "timeout"
        assert events[-2]["error"]["message"] == TIMEOUT_MESSAGE
        assert _running(client) == 0


def test_a_stream_nobody_iterates_gives_its_lease_back() -> None:
    """A response whose body is never sent (its client gone first) never runs the stream's
    finally; the lease still goes back once the stream is collected."""
    backend = ScriptedBackend([Chunk(text="hi"), Chunk(finish_reason="stop", usage=Usage(1, 1))])
    with _client(backend) as client:
        pool = _pool(client)

        async def go() -> tuple[int, int]:
            request = Request({"type": "http", "app": client.app, "state": {}, "headers": [],
                               "method": "POST", "path": "/v1/completions"})
            started = await start(request, pool, "scripted",
                                   GenerationRequest("r", TextPrompt("hi")))
            held = pool.find("scripted").running
            del started
            gc.collect()
            return held, pool.find("scripted").running

        assert client.portal is not None
        assert client.portal.call(go) == (1, 0)
