"""`lokal pull`, `lokal models` and `lokal rm` as a user runs them, against a local server
speaking the Hub's routes (HF_ENDPOINT): the pulled model's YAML serves a real request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec
from tests.client.test_pull import REPO_ID, _hub
from tests.conftest import REPO, start_server, stop_server
from tests.fake_hub import serve_hub

PULLED = "smollm2-135m-instruct-q4_1"


def lokal(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lokal.server.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **env})


def test_pull_into_a_served_models_dir_then_use_list_and_remove(tmp_path: Path) -> None:
    """The server already runs on the models dir: the pulled model's first request finds it."""
    models = tmp_path / "models"
    models.mkdir()
    gguf = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    (models / "first.yaml").write_text(f"id: first\ngguf: {{path: {gguf}}}\n")
    server = start_server(tmp_path, "--models-dir", str(models))
    try:
        with serve_hub(_hub()) as endpoint:
            done = lokal("pull", f"{REPO_ID}:Q4_1", "--models-dir", str(models),
                         HF_ENDPOINT=endpoint)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "quantization Q4_1, as asked" in done.stdout
        assert "sha256 checked" in done.stdout
        offline = lokal("models", "--models-dir", str(models), "--url", "http://127.0.0.1:9")
        assert "status unknown" in offline.stdout and PULLED in offline.stdout
        client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=PULLED, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
        assert reply.choices[0].message.content and reply.model == PULLED
        listed = lokal("models", "--models-dir", str(models), "--url", server.base_url)
        line = next(ln for ln in listed.stdout.splitlines() if PULLED in ln)
        assert "loaded" in line and REPO_ID in line and "MiB" in line
    finally:
        stop_server(server)
    removed = lokal("rm", PULLED, "--models-dir", str(models))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not list(models.rglob("*.gguf"))
    assert [p.name for p in models.glob("*.yaml")] == ["first.yaml"]
    again = lokal("rm", PULLED, "--models-dir", str(models))
    assert again.returncode == 1 and "no model" in again.stdout
