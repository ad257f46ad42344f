"""The process's life through real HTTP: live at once, ready (503 -> 200) once the model is
loaded; on SIGTERM stop accepting, let running streams finish, then stop the engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, REPO, Server, free_port, stop_server

# After a clean shutdown uvicorn re-raises the signal it caught, so the status says SIGTERM.
CLEAN_EXIT = (0, -signal.SIGTERM)
COUNTING = ", ".join(str(i) for i in range(1, 21)) + ","


def spawn(tmp: Path, *args: str) -> Server:
    """`lokal serve` without waiting for readiness (conftest's start_server waits)."""
    port = free_port()
    log = tmp / f"lokal-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lokal.server.cli", "serve", "--port", str(port),
         "--context-length", "2048", *args],
        cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=dict(os.environ))
    return Server(f"http://127.0.0.1:{port}", proc, log)


def watch_start(server: Server, timeout: float = 180) -> list[tuple[int, int]]:
    """Polls from the first moment the port answers until ready: (live, ready) statuses."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log_text()
        try:
            ready = httpx.get(server.base_url + "/health/ready", timeout=5)
            live = httpx.get(server.base_url + "/health/live", timeout=5)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        seen.append((live.status_code, ready.status_code))
        if ready.status_code == 200:
            return seen
        assert ready.headers.get("retry-after"), ready.headers
        assert ready.json() == {"status": "loading"}
        time.sleep(0.02)
    raise AssertionError(f"never ready: {seen}\n{server.log_text()}")


def sigterm_mid_stream(server: Server, max_tokens: int, started: Callable[[str], bool]
                       ) -> tuple[threading.Thread, dict[str, object]]:
    """Streams a counting completion in a thread and sends SIGTERM once `started` holds for the
    text read so far (or the stream ended). The thread leaves the whole text under "raw", or
    under "error" what ended the stream otherwise."""
    got_token = threading.Event()
    outcome: dict[str, object] = {}

    def consume() -> None:
        body = {"model": MODEL, "prompt": COUNTING, "max_tokens": max_tokens,
                "temperature": 0, "stream": True}
        try:
            with httpx.stream("POST", server.v1 + "/completions", json=body,
                              timeout=300) as r:
                raw = ""
                for text in r.iter_text():
                    raw += text
                    if started(raw):
                        got_token.set()
                outcome["raw"] = raw
        except Exception as exc:
            outcome["error"] = exc
        finally:
            got_token.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert got_token.wait(300)
    server.process.send_signal(signal.SIGTERM)
    return reader, outcome


@pytest.fixture(scope="module")
def starting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[
        tuple[int, int]]]]:
    srv = spawn(tmp_path_factory.mktemp("shutdown"), "--shutdown-grace", "300")
    try:
        seen = watch_start(srv)
        yield srv, seen
    finally:
        if srv.process.poll() is None:
            stop_server(srv)


def test_live_at_once_ready_only_after_the_model_loaded(
        starting: tuple[Server, list[tuple[int, int]]]) -> None:
    server, seen = starting
    assert seen[0] == (200, 503), seen  # loading takes seconds; the port opens before
    assert seen[-1] == (200, 200)
    assert all(live == 200 for live, _ in seen)
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert httpx.get(server.base_url + "/health/ready").json()["models"] == [MODEL]


def test_sigterm_lets_a_running_stream_finish_then_stops_the_engine(
        starting: tuple[Server, list[tuple[int, int]]]) -> None:
    server, _ = starting
    reader, outcome = sigterm_mid_stream(server, 300, lambda raw: "data: {" in raw)

    # Stop accepting: new connections are refused while the stream still runs.
    refused_while_streaming = False
    while reader.is_alive():
        try:
            httpx.get(server.base_url + "/health/live", timeout=2)
        except httpx.ConnectError:
            refused_while_streaming = reader.is_alive()
            break
        time.sleep(0.01)
    reader.join(300)
    assert "error" not in outcome, outcome
    assert refused_while_streaming, "the server still accepted connections after SIGTERM"

    raw = str(outcome["raw"])
    assert raw.endswith("data: [DONE]\n\n"), raw[-300:]
    events = [json.loads(block.removeprefix("data: ")) for block in raw.split("\n\n")
              if block.startswith("data: {")]
    assert all("error" not in e for e in events), events[-1]
    assert events[-1]["choices"][0]["finish_reason"] == "length", events[-1]
    assert server.process.wait(120) in CLEAN_EXIT
    log = server.log_text()
    assert "Waiting for connections to close" in log
    assert "timeout graceful shutdown exceeded" not in log
    assert log.index("Waiting for connections to close") < log.index("engines stopped")
    assert "Application shutdown complete" in log


def test_after_the_grace_period_streams_are_cut_and_the_process_exits(tmp_path: Path) -> None:
    server = spawn(tmp_path, "--shutdown-grace", "1")
    try:
        watch_start(server)
        reader, outcome = sigterm_mid_stream(server, 1900, lambda _: True)
        assert server.process.wait(120) in CLEAN_EXIT
        reader.join(60)
        assert isinstance(outcome.get("error"), (type(None), httpx.HTTPError)), outcome
        assert "data: [DONE]" not in str(outcome.get("raw", "")), "stream was not cut"
        log = server.log_text()
        assert "timeout graceful shutdown exceeded" in log
        assert "engines stopped" in log
    finally:
        if server.process.poll() is None:
            stop_server(server)
