"""Limits and hygiene through real HTTP: body size (413), per-request timeout (504), CORS only
when configured, JSON logs with the request id on every line and no prompt text, X-Request-ID."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.e2e.sse import read_events
from tests.openapi import validate

KEY = "limits-key-Hh2"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "https://app.example.com"
LIMIT = 64 * 1024
COUNTING = ", ".join(str(i) for i in range(1, 21)) + ","


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("limits"), "--context-length", "1024",
                       "--max-body-bytes", str(LIMIT), "--cors-origins", ORIGIN,
                       "--log-format", "json", "--metrics-open",
                       env={"LOKAL_API_KEY": KEY})
    yield srv
    stop_server(srv)


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 2, **extra}


def _assert_envelope(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == code


def test_body_over_the_limit_is_413(limited: Server) -> None:
    r = httpx.post(limited.v1 + "/chat/completions", headers=AUTH,
                   json=_chat("x" * (LIMIT + 1)))
    _assert_envelope(r, 413, "request_too_large")
    assert str(LIMIT) in r.json()["error"]["message"]
    assert r.headers["x-request-id"]


def test_chunked_body_over_the_limit_is_413(limited: Server) -> None:
    # No Content-Length: the limit is enforced while the body streams in.
    payload = json.dumps(_chat("y" * (LIMIT * 2))).encode()

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(payload), 8192):
            yield payload[i:i + 8192]

    r = httpx.post(limited.v1 + "/chat/completions", content=pieces(),
                   headers={**AUTH, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    _assert_envelope(r, 413, "request_too_large")


def test_body_under_the_limit_is_served(limited: Server) -> None:
    r = httpx.post(limited.v1 + "/chat/completions", headers=AUTH,
                   json=_chat("hello " * 100), timeout=120)
    assert r.status_code == 200, r.text


def test_request_id_is_echoed_even_on_refusals(limited: Server) -> None:
    mine = {"X-Request-ID": "my-trace-42"}
    assert httpx.get(limited.base_url + "/health/live", headers=mine).headers[
        "x-request-id"] == "my-trace-42"
    refused = httpx.get(limited.v1 + "/models", headers=mine)
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "my-trace-42"
    too_big = httpx.post(limited.v1 + "/completions", headers={**AUTH, **mine},
                         content=b"x" * (LIMIT + 1))
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "my-trace-42"


def test_request_id_is_made_when_not_sent(http: httpx.Client) -> None:
    seen = set()
    for r in (http.get("/health/live"), http.get("/v1/models"),
              http.post("/v1/chat/completions", json={})):
        assert r.headers["x-request-id"].startswith("req_"), r.headers
        seen.add(r.headers["x-request-id"])
    assert len(seen) == 3


def test_metrics_can_be_configured_open(limited: Server) -> None:
    assert httpx.get(limited.base_url + "/metrics").status_code == 200
    assert httpx.get(limited.v1 + "/models").status_code == 401


def test_cors_preflight_and_response_for_a_configured_origin(limited: Server) -> None:
    preflight = httpx.options(limited.v1 + "/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(limited.v1 + "/models", headers={**AUTH, "Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


def test_cors_refuses_other_origins(limited: Server) -> None:
    preflight = httpx.options(limited.v1 + "/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    r = httpx.get(limited.v1 + "/models", headers={**AUTH, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_is_off_unless_configured(http: httpx.Client) -> None:
    preflight = http.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    r = http.get("/v1/models", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in r.headers


def test_json_logs_carry_the_request_id_and_no_prompt_text(limited: Server) -> None:
    secret = "purple-walrus-prompt-5521"
    rid = "trace-json-log-1"
    r = httpx.post(limited.v1 + "/chat/completions", json=_chat(secret),
                   headers={**AUTH, "X-Request-ID": rid}, timeout=120)
    assert r.status_code == 200, r.text
    ours: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    while not ours and time.monotonic() < deadline:
        lines = [ln for ln in limited.log_text().splitlines() if ln.startswith("{")]
        records = [json.loads(ln) for ln in lines]
        ours = [rec for rec in records if rec["request_id"] == rid]
        time.sleep(0.1)
    assert ours, "no log line carries the request id"
    assert any("/v1/chat/completions" in str(rec["message"]) for rec in ours)
    for rec in records:
        assert {"time", "level", "logger", "message", "request_id"} <= set(rec)
    assert secret not in limited.log_text()


@pytest.fixture(scope="module")
def hurried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("timeout"), "--context-length", "2048",
                       "--request-timeout", "2", "--log-prompts")
    yield srv
    stop_server(srv)


def _cancelled(server: Server) -> float:
    for line in httpx.get(server.base_url + "/metrics").text.splitlines():
        if line.startswith("lokal_requests_cancelled_total{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no lokal_requests_cancelled_total")


def _wait_idle(server: Server) -> str:
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(server.base_url + "/metrics").text
        if (f'lokal_requests_running{{model="{MODEL}"}} 0.0' in text
                and f'lokal_requests_waiting{{model="{MODEL}"}} 0.0' in text):
            break
        time.sleep(0.2)
    return text


def test_a_request_over_the_timeout_is_504_and_its_work_stops(hurried: Server) -> None:
    before = _cancelled(hurried)
    r = httpx.post(hurried.v1 + "/completions", timeout=120, json={
        "model": MODEL, "prompt": COUNTING, "max_tokens": 1900, "temperature": 0})
    _assert_envelope(r, 504, "timeout")
    assert r.json()["error"]["type"] == "server_error"
    assert "LOKAL_REQUEST_TIMEOUT" in r.json()["error"]["message"]
    assert f'lokal_requests_running{{model="{MODEL}"}} 0.0' in _wait_idle(hurried)
    assert _cancelled(hurried) > before


def test_a_stream_over_the_timeout_ends_with_an_error_event_then_done(hurried: Server) -> None:
    body = {"model": MODEL, "prompt": "7, 8, 9, 10, 11, 12,", "max_tokens": 1900,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", hurried.v1 + "/completions", json=body, timeout=120) as r:
        if r.status_code == 504:  # the deadline passed before the first token (busy machine)
            r.read()
            _assert_envelope(r, 504, "timeout")
            return
        assert r.status_code == 200
        events, _ = read_events(r)
    assert "error" in events[-1], events[-1]
    assert events[-1]["error"]["code"] == "timeout"
    assert all("error" not in e for e in events[:-1])
    assert f'lokal_requests_running{{model="{MODEL}"}} 0.0' in _wait_idle(hurried)



def test_prompts_are_logged_only_when_asked_for(hurried: Server) -> None:
    secret = "teal-otter-prompt-8812"
    r = httpx.post(hurried.v1 + "/completions", timeout=120, json={
        "model": MODEL, "prompt": secret, "max_tokens": 1})
    assert r.status_code in (200, 504), r.text  # either way the prompt reached the engine
    assert secret in hurried.log_text()  # the limits server (no --log-prompts) never logs it
