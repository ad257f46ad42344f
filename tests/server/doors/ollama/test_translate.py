"""Ollama's requests -> lokal's (options, keep_alive, format, messages, tools), and its routes
over a scripted engine: names, errors in Ollama's shape, load/unload, refusals."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lokal.backends.base import ChatPrompt, Chunk, TextPrompt, Usage
from lokal.server.doors.ollama.translate import chat_request, keep_alive_seconds, sampling
from lokal.server.doors.ollama.wire import ChatRequest, OllamaOptions
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits
from tests.server.scripted import ScriptedBackend, scripted_client

SCRIPT = [Chunk(text="ok"), Chunk(text="!", finish_reason="stop", usage=Usage(4, 2))]


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(SCRIPT)


@pytest.fixture(scope="module")
def client(backend: ScriptedBackend) -> Iterator[TestClient]:
    yield scripted_client(backend)


@pytest.mark.parametrize(("value", "seconds"), [
    ("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0), (0, 0.0), (90, 90.0), ("250ms", 0.25),
    ("-1", math.inf), (-1, math.inf), ("-5m", math.inf), ("12.5", 12.5), (None, None),
])
def test_keep_alive_reads_go_durations_and_seconds(value: object, seconds: float) -> None:
    assert keep_alive_seconds(value) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["5x", "m", "", "1h 2m", True])
def test_keep_alive_refuses_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(APIError):
        keep_alive_seconds(value)  # type: ignore[arg-type]


def test_options_map_onto_sampling() -> None:
    params = sampling(OllamaOptions.model_validate({
        "temperature": 0.2, "top_p": 0.5, "top_k": 7, "min_p": 0.05, "num_predict": 12,
        "stop": ["\n"], "seed": 3, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "repeat_penalty": 1.3, "num_ctx": 1024, "num_gpu": 99, "num_thread": 4,
        "use_mmap": True, "mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0,
        "repeat_last_n": 64}), 2048)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.2, 0.5, 7, 0.05)
    assert (params.max_tokens, params.stop, params.seed) == (12, ("\n",), 3)
    assert (params.presence_penalty, params.frequency_penalty) == (0.1, 0.2)
    assert params.repetition_penalty == 1.3


def test_no_options_sample_as_ollama_does_by_default() -> None:
    params = sampling(None, 2048)
    assert (params.temperature, params.top_p, params.top_k) == (0.8, 0.9, 40)
    assert (params.repetition_penalty, params.max_tokens, params.seed) == (1.1, None, None)


@pytest.mark.parametrize("num_predict", [-1, -2])
def test_num_predict_unlimited_and_fill_mean_no_cap(num_predict: int) -> None:
    assert sampling(OllamaOptions(num_predict=num_predict), 2048).max_tokens is None


@pytest.mark.parametrize(("options", "named"), [
    ({"mirostat": 2}, "mirostat"), ({"tfs_z": 0.5}, "tfs_z"), ({"typical_p": 0.7}, "typical_p"),
    ({"penalize_newline": True}, "penalize_newline"), ({"num_ctx": 4096}, "num_ctx"),
    ({"repeat_last_n": 8, "repeat_penalty": 1.2}, "repeat_last_n"),
    ({"num_predict": -3}, "num_predict"), ({"num_predict": 0}, "num_predict"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_options_lokal_cannot_honour_are_refused_by_name(options: dict[str, object],
                                                         named: str) -> None:
    with pytest.raises(APIError) as err:
        sampling(OllamaOptions.model_validate(options), 2048)
    assert err.value.status == 400 and f"'{named}'" in err.value.message


def test_tool_round_trip_messages_get_call_ids() -> None:
    body = ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"function": {"name": "b", "arguments": {}}}]},
        {"role": "tool", "content": "B", "tool_name": "b"},
        {"role": "tool", "content": "A"}],
        "tools": [{"type": "function", "function": {"name": "a", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}}}}},
                  {"type": "function", "function": {"name": "b"}}]})
    translated = chat_request(body, "r", "m", 2048, SchemaLimits())
    prompt = translated.generation.prompt
    assert isinstance(prompt, ChatPrompt) and len(prompt.tools) == 2
    calls = prompt.messages[1].tool_calls
    assert [c.arguments for c in calls] == ['{"x": 1}', "{}"]
    assert prompt.messages[2].tool_call_id == calls[1].id
    assert prompt.messages[3].tool_call_id == calls[0].id
    assert translated.plan.names and not translated.plan.forced


def test_chat_names_tags_and_streams_ndjson(client: TestClient) -> None:
    r = client.post("/api/chat", json={"model": "scripted:latest",
                                       "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert r.text.count("\n") == 3 and '"done":true' in r.text.splitlines()[-1]


def test_generate_raw_suffix_and_format(client: TestClient, backend: ScriptedBackend) -> None:
    r = client.post("/api/generate", json={"model": "scripted", "prompt": "def f(", "stream":
                                           False, "suffix": "return 1", "format": "json"})
    assert r.status_code == 200, r.text
    sent = backend.requests[-1]
    assert sent.prompt == TextPrompt("def f(") and sent.suffix == "return 1"
    assert sent.constraint is not None and sent.constraint.kind == "json_object"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    client.post("/api/generate", json={"model": "scripted", "prompt": "x", "stream": False,
                                       "system": "be brief", "format": schema})
    sent = backend.requests[-1]
    assert isinstance(sent.prompt, ChatPrompt) and sent.prompt.messages[0].role == "system"
    assert sent.constraint is not None and sent.constraint.schema == schema


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
    ("/api/show", {"model": "nope:latest"}, 404, "model 'nope:latest' not found"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "images": ["aGk="]}, 400, "images"),
    ("/api/chat", {"model": "scripted", "messages": [
        {"role": "user", "content": "x", "images": ["aGk="]}]}, 400, "images"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "template": "{{ .Prompt }}"}, 400,
     "template"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "context": [1, 2]}, 400, "context"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "think": True}, 400, "thinking"),
    ("/api/generate", {"model": "scripted", "prompt": "x", "keep_alive": "soon"}, 400,
     "keep_alive"),
    ("/api/chat", {"model": "scripted", "messages": "hi"}, 400, "messages"),
    ("/api/chat", {"model": "scripted", "messages": [{"role": "user", "content": "x"}],
                   "format": "json", "tools": [{"type": "function",
                                                "function": {"name": "f"}}]}, 400, "tools"),
    ("/api/pull", {"model": "x"}, 400, "lokal pull"),
    ("/api/create", {"model": "x"}, 400, "models directory"),
])
def test_errors_are_ollamas_shape(client: TestClient, path: str, body: dict[str, object],
                                  status: int, words: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"]


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: TestClient) -> None:
    r = client.post("/api/generate", json={"model": "scripted", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert client.get("/api/ps").json() == {"models": []}
    r = client.post("/api/chat", json={"model": "scripted:latest", "keep_alive": "10m"})
    assert r.json()["done_reason"] == "load" and r.json()["message"]["content"] == ""
    [running] = client.get("/api/ps").json()["models"]
    assert running["name"] == "scripted:latest" and running["size_vram"] == 0


def test_root_and_version_answer_probes(client: TestClient) -> None:
    r = client.get("/")
    assert r.text == "Ollama is running" and r.headers["content-type"].startswith("text/plain")
    assert client.head("/").status_code == 200
    assert client.get("/api/version").json()["version"]


@pytest.mark.parametrize(("method", "path", "words"), [
    ("POST", "/api/pull", "lokal pull"), ("POST", "/api/push", "push models"),
    ("POST", "/api/create", "add a YAML"), ("POST", "/api/copy", "aliases"),
    ("DELETE", "/api/delete", "lokal rm"), ("POST", "/api/blobs/sha256:00", "model files"),
])
def test_what_ollama_manages_itself_is_a_400_saying_what_to_do(
        client: TestClient, method: str, path: str, words: str) -> None:
    r = client.request(method, path, json={"model": "x"})
    assert r.status_code == 400 and r.json() == {"error": r.json()["error"]}
    assert "models directory" in r.json()["error"] and words in r.json()["error"]
    if path.startswith("/api/blobs"):  # clients probe blobs with HEAD first
        assert client.head(path).status_code == 400
