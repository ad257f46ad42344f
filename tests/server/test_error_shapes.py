"""Each protocol's error envelope, chosen by the request's path, for errors raised anywhere:
middlewares (401, 413, 431), routing (404) and handlers. Validated against each vendor's spec."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool import ModelPool
from lokal.backends.spec import ModelSpec
from lokal.server.app import create_app
from lokal.server.doors.anthropic.render import anthropic_envelope
from lokal.server.doors.ollama.render import ollama_envelope
from lokal.server.errors import APIError, envelope_for, openai_envelope
from lokal.server.settings import ServerSettings
from tests.openapi import validate
from tests.server.test_faults import FaultyBackend


@pytest.mark.parametrize(("path", "protocol"), [
    ("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
    ("/v1/messagesx", "openai"), ("/api/chat", "ollama"), ("/api", "ollama"),
    ("/apis", "openai"), ("/v1/chat/completions", "openai"), ("/", "openai"),
])
def test_the_protocol_comes_from_the_path(path: str, protocol: str) -> None:
    """The door owning the path (the longest prefix a door registers) gives the shape."""
    app = create_app(ServerSettings())
    expected = {"anthropic": anthropic_envelope, "ollama": ollama_envelope,
                "openai": openai_envelope}[protocol]
    assert envelope_for(app, path) is expected


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
    (413, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"),
    (503, "overloaded_error"), (504, "timeout_error"), (431, "invalid_request_error"),
])
def test_anthropic_bodies_follow_anthropics_spec(status: int, kind: str) -> None:
    body = anthropic_envelope(APIError(status, "why"), "req_1")
    validate(body, "ErrorResponse", vendor="anthropic")
    assert body["error"] == {"type": kind, "message": "why"} and body["request_id"] == "req_1"


def test_openai_and_ollama_bodies() -> None:
    err = APIError(400, "bad", param="x", code="invalid_value")
    validate(openai_envelope(err, "r"), "ErrorResponse")
    assert ollama_envelope(err, "r") == {"error": "bad"}


@pytest.fixture()
def client() -> TestClient:
    backend = FaultyBackend("ok")
    pool = ModelPool([ModelSpec.model_validate({"id": "faulty", "gguf": {"path": "/x"}})],
                     Hardware((), "test"), factory=lambda _: backend,
                     estimator=lambda _: Footprint("cpu"))
    pool.prepare()
    settings = ServerSettings(api_key="secret-key", max_body_bytes=2048)
    return TestClient(create_app(settings, pool), raise_server_exceptions=False)


def test_middleware_errors_take_the_shape_of_the_path(client: TestClient) -> None:
    with client:
        r = client.post("/v1/messages", json={})
        assert r.status_code == 401
        validate(r.json(), "ErrorResponse", vendor="anthropic")
        assert r.json()["error"]["type"] == "authentication_error"
        r = client.post("/api/chat", json={})
        assert r.status_code == 401 and set(r.json()) == {"error"}
        r = client.post("/v1/chat/completions", json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        big = {"x-api-key": "secret-key", "content-length": "999999"}
        r = client.post("/v1/messages", content=b"{}", headers=big)
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        r = client.post("/v1/messages/no-such-route", json={},
                        headers={"x-api-key": "secret-key"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        r = client.get("/api/no-such-route", headers={"x-api-key": "secret-key"})
        assert r.status_code == 404 and isinstance(r.json()["error"], str)
