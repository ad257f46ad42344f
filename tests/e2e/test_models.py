"""/v1/models, health and the CLI's model selection, against the real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec
from tests.conftest import MODEL, Server, start_server, stop_server
from tests.openapi import validate


def test_list_models(http: httpx.Client, client: openai.OpenAI, backend_name: str) -> None:
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    validate(body, "ListModelsResponse")
    (model,) = body["data"]
    assert model["id"] == MODEL
    assert model["context_length"] == 8192
    assert model["backend"] == backend_name
    assert "NVIDIA" in model["backend_reason"] or "GPU" in model["backend_reason"]
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_health_and_version(http: httpx.Client) -> None:
    assert http.get("/health/live").json() == {"status": "ok"}
    assert http.get("/health/ready").status_code == 200
    assert http.get("/health").status_code == 200
    assert http.get("/version").json()["version"]


def test_serve_a_gguf_path_with_env_settings(tmp_path: Path) -> None:
    gguf = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    link = tmp_path / "my-model.gguf"
    link.symlink_to(gguf)
    srv = start_server(tmp_path, "--model", str(link), env={"LOKAL_CONTEXT_LENGTH": "512"})
    try:
        models = httpx.get(f"{srv.v1}/models").json()["data"]
        assert [(m["id"], m["context_length"]) for m in models] == [("my-model", 512)]
        r = httpx.post(f"{srv.v1}/chat/completions", timeout=60, json={
            "model": "my-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 600})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        # Anthropic's max_tokens and the Responses API's max_output_tokens are ceilings: past the
        # room the prompt leaves, the model writes to the end of the context and is cut there.
        count = " ".join(str(n) for n in range(1, 130))  # a prefill the model goes on with
        r = httpx.post(f"{srv.base_url}/v1/messages", timeout=120, json={
            "model": "my-model", "max_tokens": 600, "temperature": 0, "messages": [
                {"role": "user", "content": "Count from 1 to 1000."},
                {"role": "assistant", "content": count}]})
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert r.json()["stop_reason"] == "max_tokens"
        assert usage["input_tokens"] + usage["output_tokens"] == 512
        r = httpx.post(f"{srv.v1}/responses", timeout=120, json={
            "model": "my-model", "max_output_tokens": 600, "temperature": 0, "input": [
                {"role": "user", "content": "Count from 1 to 1000."},
                {"role": "assistant", "content": count}]})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "incomplete"
        assert r.json()["usage"]["input_tokens"] + r.json()["usage"]["output_tokens"] == 512
        r = httpx.post(f"{srv.base_url}/v1/messages", timeout=120, json={
            "model": "my-model", "max_tokens": 8, "messages": [
                {"role": "user", "content": "dog " * 600}]})  # no room at all: still a 400
        assert r.status_code == 400 and r.json()["type"] == "error"
    finally:
        stop_server(srv)


def test_config_file_and_missing_model_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "broken.yaml"
    cfg.write_text("id: broken\ngguf:\n  path: does-not-exist.gguf\n")
    proc = subprocess.run([sys.executable, "-m", "lokal.server.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    assert "model file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture()
def alias_server(tmp_path: Path) -> Server:
    cfg = tmp_path / "alias.yaml"
    gguf = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    cfg.write_text(f"id: tiny\naliases: [gpt-4o-mini]\ncontext_length: 1024\n"
                   f"gguf:\n  path: {gguf}\n")
    return start_server(tmp_path, "--config", str(cfg), "--backend", "llamacpp")


def test_config_with_alias_and_forced_backend(alias_server: Server) -> None:
    try:
        model = httpx.get(f"{alias_server.v1}/models").json()["data"][0]
        assert model["id"] == "tiny"
        assert model["backend_reason"] == "llamacpp forced by configuration"
        r = httpx.post(f"{alias_server.v1}/chat/completions", timeout=60, json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2})
        assert r.status_code == 200
    finally:
        stop_server(alias_server)
