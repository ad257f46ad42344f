"""Injected engine faults (a fake engine is allowed only here): 500 with a request id and no
internals, mid-stream failures as one SSE error event then [DONE], and error mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from lokal.backends.base import (
    BackendStats,
    Capabilities,
    Chunk,
    GenerationRequest,
    ModelInfo,
    Usage,
)
from lokal.backends.errors import Busy, EngineDown, EngineFailure, InvalidParameter
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool import ModelPool
from lokal.backends.spec import ModelSpec
from lokal.server.app import create_app
from lokal.server.errors import to_api_error, validation_error
from lokal.server.settings import ServerSettings
from tests.openapi import validate


class FaultyBackend:
    """Fails the way a real engine can: at once, or after some output."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.closed = False
        self._info = ModelInfo("faulty", 128, "fake", "test", "cpu", capabilities=Capabilities())

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        pass

    def stats(self) -> BackendStats:
        return BackendStats(engine_error="engine process gone" if self.mode == "dead" else None)

    async def stop(self) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        try:
            if self.mode == "crash":
                raise RuntimeError("segfault-ish detail /secret/path")
            if self.mode == "busy":
                raise Busy("queue full", retry_after=3)
            if self.mode == "dead":
                raise EngineDown("engine process gone")
            yield Chunk(0, "partial")
            if self.mode == "midstream":
                raise EngineFailure("decode failed: internal detail")
            yield Chunk(0, finish_reason="stop", usage=Usage(3, 1))
        finally:
            self.closed = True


def _client(mode: str) -> tuple[TestClient, FaultyBackend]:
    backend = FaultyBackend(mode)
    pool = ModelPool([ModelSpec.model_validate({"id": "faulty", "gguf": {"path": "/x"}})],
                     Hardware((), "test"), factory=lambda _: backend,
                     estimator=lambda _: Footprint("cpu"))
    pool.prepare()
    app = create_app(ServerSettings(), pool)
    return TestClient(app, raise_server_exceptions=False), backend


BODY = {"model": "faulty", "messages": [{"role": "user", "content": "x"}]}


# The fake loads at once; the deadline only catches a hang, with room for a busy machine.
READY_WAIT = 30.0


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_WAIT
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("fake pool never became ready")


def _wait_loaded(client: TestClient) -> None:
    deadline = time.monotonic() + READY_WAIT
    while time.monotonic() < deadline:
        if "lokal_ready 1.0" in client.get("/metrics").text:
            return
        time.sleep(0.01)
    raise AssertionError("fake pool never loaded")


def test_engine_crash_is_500_with_request_id_and_no_internals() -> None:
    client, _ = _client("crash")
    with client:
        _wait_ready(client)
        r = client.post("/v1/chat/completions", json=BODY, headers={"x-request-id": "req_abc"})
        assert r.status_code == 500
        validate(r.json(), "ErrorResponse")
        message = r.json()["error"]["message"]
        assert "req_abc" in message
        assert "secret" not in message and "segfault" not in message
        assert r.headers["x-request-id"] == "req_abc"
        assert client.get("/health/live").status_code == 200


def test_busy_is_429_with_retry_after() -> None:
    client, _ = _client("busy")
    with client:
        _wait_ready(client)
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "rate_limit_error"


def test_midstream_failure_is_one_error_event_then_done() -> None:
    client, backend = _client("midstream")
    with client:
        _wait_ready(client)
        r = client.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert r.status_code == 200
        data = [ln.removeprefix("data: ") for ln in r.text.split("\n") if ln.startswith("data: ")]
        assert data[-1] == "[DONE]"
        import json

        error = json.loads(data[-2])
        validate(error, "ErrorResponse")
        assert "internal detail" not in error["error"]["message"]
        assert error["error"]["type"] == "server_error"
        contents = [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:-2]]
        assert contents == ["", "partial"]
        assert backend.closed


def test_a_dead_engine_fails_liveness_readiness_and_requests_with_503() -> None:
    client, _ = _client("dead")
    with client:
        _wait_loaded(client)  # loaded, but dead: readiness never turns 200
        for path in ("/health/live", "/health/ready", "/health"):
            r = client.get(path)
            assert r.status_code == 503, path
            assert r.json() == {"status": "engine_down",
                                "errors": {"faulty": "engine process gone"}}
        assert 'lokal_engine_up{model="faulty"} 0.0' in client.get("/metrics").text
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 503
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "engine_down"
        assert "restart" in r.json()["error"]["message"]


def test_a_healthy_engine_reports_up() -> None:
    client, _ = _client("ok")
    with client:
        _wait_ready(client)
        assert client.get("/health/live").json() == {"status": "ok"}
        assert 'lokal_engine_up{model="faulty"} 1.0' in client.get("/metrics").text


class NeverLoads(FaultyBackend):
    async def start(self) -> None:
        await asyncio.Event().wait()  # a load that outlasts the request's patience


def test_a_load_longer_than_load_timeout_is_503_with_retry_after() -> None:
    backend = NeverLoads("ok")
    pool = ModelPool([ModelSpec.model_validate({"id": "faulty", "gguf": {"path": "/x"}})],
                     Hardware((), "test"), factory=lambda _: backend,
                     estimator=lambda _: Footprint("cpu"), load_timeout=0.3)
    pool.prepare()
    with TestClient(create_app(ServerSettings(), pool), raise_server_exceptions=False) as client:
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200
        r = client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "model_not_ready"
        assert "still loading" in r.json()["error"]["message"]
        validate(r.json(), "ErrorResponse")


def test_mapping_table() -> None:
    err = to_api_error(InvalidParameter("bad", param="x"), "r")
    assert (err.status, err.param, err.type) == (400, "x", "invalid_request_error")
    err = to_api_error(ValueError("boom"), "r1")
    assert err.status == 500 and "r1" in err.message and "boom" not in err.message


def test_validation_error_param_paths() -> None:
    exc = RequestValidationError([{"loc": ("body", "messages", 2, "content", "str"),
                                   "msg": "Input should be a valid string", "type": "string_type"}])
    assert validation_error(exc).param == "messages[2].content"
    exc = RequestValidationError([{"loc": ("body",), "msg": "Field required", "type": "missing"}])
    assert validation_error(exc).status == 400
