"""Ollama's native API on the real model through real HTTP, driven by the official `ollama`
client: chat and generate (streamed and not), embed, list, show, ps; enforced formats, the
options mapping, keep_alive unloading, Ollama's error shape, a dropped stream freeing the slot."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from tests.conftest import CLIENT_TIMEOUT, MODEL, Server, start_server, stop_server

TAGGED = f"{MODEL}:latest"
HI = [{"role": "user", "content": "Say hello."}]
KEY = "ollama-door-key-Vb7"


@pytest.fixture()
def api(server: Server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=CLIENT_TIMEOUT)


def test_chat_streamed_and_not(api: ollama.Client) -> None:
    whole = api.chat(model=TAGGED, messages=HI, options={"num_predict": 8, "temperature": 0})
    assert whole.done is True and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count is not None and 0 < whole.eval_count <= 8
    assert whole.prompt_eval_count and whole.total_duration and whole.total_duration > 0
    parts = list(api.chat(model=MODEL, messages=HI, stream=True,
                          options={"num_predict": 8, "temperature": 0}))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_generate_streamed_and_not_and_num_predict_caps(api: ollama.Client) -> None:
    counting = {"num_predict": 5, "temperature": 0}
    whole = api.generate(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", raw=True, options=counting)
    assert (whole.done_reason, whole.eval_count) == ("length", 5)
    parts = list(api.generate(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", raw=True,
                              options=counting, stream=True))
    assert parts[-1].done and parts[-1].eval_count == 5
    assert "".join(p.response for p in parts) == whole.response
    assert all(p.total_duration is None for p in parts[:-1])


def test_format_json_and_schema_are_enforced(api: ollama.Client) -> None:
    schema = {"type": "object", "properties": {"count": {"type": "integer"}},
              "required": ["count"], "additionalProperties": False}
    out = api.chat(model=MODEL, messages=[{"role": "user", "content": "How many legs?"}],
                   format=schema, options={"num_predict": 40, "temperature": 0})
    assert out.done_reason == "stop"
    assert isinstance(json.loads(out.message.content or "")["count"], int)
    out2 = api.generate(model=MODEL, prompt="Describe a cat.", format="json",
                        options={"num_predict": 60, "temperature": 0})
    if out2.done_reason == "stop":  # a cut object is not whole JSON; a finished one is
        assert isinstance(json.loads(out2.response), dict)
    else:
        assert out2.response.lstrip().startswith("{")


def test_list_show_ps_and_embed(api: ollama.Client) -> None:
    names = [m.model for m in api.list().models]
    assert TAGGED in names
    listed = next(m for m in api.list().models if m.model == TAGGED)
    assert listed.digest and len(listed.digest) == 64 and listed.modified_at is not None
    shown = api.show(TAGGED)  # the name /api/tags gives works everywhere
    assert shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo is not None
    assert any(k.endswith(".context_length") for k in shown.modelinfo)
    running = {m.model: m for m in api.ps().models}
    assert TAGGED in running and running[TAGGED].context_length
    assert running[TAGGED].expires_at is not None
    embedded = api.embed(model=MODEL, input=["a cat", "a dog", "a car"])
    assert len(embedded.embeddings) == 3 and len({len(v) for v in embedded.embeddings}) == 1
    legacy = api.embeddings(model=TAGGED, prompt="a cat")
    assert len(legacy.embedding) == len(embedded.embeddings[0])


@pytest.mark.backends("llamacpp")
def test_embed_truncates_a_long_input_as_ollama_does(api: ollama.Client) -> None:
    """Ollama's /api/embed keeps the first tokens of an input too long for the model unless
    `truncate` is false (then a 400): two long inputs that differ only past the limit get the
    same vector, and prompt_eval_count counts what was embedded. OpenAI's endpoint refuses."""
    body = "The quick brown fox jumps over the lazy dog. " * 400  # ~4,000 tokens; 2,048 fit
    cut = api.embed(model=MODEL, input=[body + "Cats.", body + "A very different ending."])
    assert cut.prompt_eval_count == 2 * 2048
    assert cut.embeddings[0] == cut.embeddings[1]
    short = api.embed(model=MODEL, input="The quick brown fox jumps over the lazy dog.")
    assert short.embeddings[0] != cut.embeddings[0]
    with pytest.raises(ollama.ResponseError) as refused:
        api.embed(model=MODEL, input=body, truncate=False)
    assert refused.value.status_code == 400 and "2048" in refused.value.error


def test_errors_in_ollamas_shape(api: ollama.Client, http: httpx.Client) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        api.chat(model="no-such-model", messages=HI)
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as too_big:
        api.generate(model=MODEL, prompt="hi", options={"num_ctx": 10_000_000})
    assert too_big.value.status_code == 400 and "num_ctx" in too_big.value.error
    r = http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "robot"}]})
    assert r.status_code == 400 and list(r.json()) == ["error"]
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "images": ["aGk="]})
    assert r.status_code == 400 and "images" in r.json()["error"]
    probe = http.get("/")
    assert probe.status_code == 200 and probe.text == "Ollama is running"


def test_dropped_stream_frees_the_slot(server: Server, http: httpx.Client) -> None:
    before = server.log_text().count("cancelled after")
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "raw": True,
            "options": {"num_predict": 6000, "temperature": 0}}
    with http.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = r.iter_lines()
        assert all(json.loads(next(lines))["done"] is False for _ in range(5))
    r = http.post("/api/generate", timeout=120, json={"model": MODEL, "prompt": "Hello",
                                                      "stream": False,
                                                      "options": {"num_predict": 3}})
    assert r.status_code == 200, r.text
    # A wait on the log line, with room for a busy machine: a generation that went on would
    # never be logged as cancelled, however long this waited.
    deadline = time.monotonic() + 120
    while server.log_text().count("cancelled after") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_text().count("cancelled after") > before


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("ollama"), "--context-length", "1024",
                       env={"LOKAL_API_KEY": KEY})
    yield srv
    stop_server(srv)


def test_bad_key_and_keep_alive_zero_unloads(keyed: Server) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed.base_url, headers={"Authorization": "Bearer nope"}).list()
    assert refused.value.status_code == 401 and "API key" in refused.value.error
    api = ollama.Client(host=keyed.base_url, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=120)
    assert TAGGED in {m.model for m in api.ps().models}
    out = api.generate(model=MODEL, prompt="Hi", keep_alive=0, options={"num_predict": 2})
    assert out.done
    deadline = time.monotonic() + 60  # the unload, on a machine maybe 5x slower than alone
    while api.ps().models and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.ps().models == []
    status = httpx.get(f"{keyed.base_url}/v1/models", headers={"x-api-key": KEY}).json()
    assert status["data"][0]["status"] == "unloaded"
    loaded = api.generate(model=TAGGED, keep_alive="1h")  # Ollama's way to load a model
    assert loaded.done_reason == "load"
    [running] = api.ps().models
    assert running.expires_at is not None and running.context_length == 1024
    assert api.generate(model=MODEL, keep_alive=0).done_reason == "unload"
    assert api.ps().models == []
