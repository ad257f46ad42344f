"""Many models behind one endpoint, on the real engine and real models (SmolLM2-135M and
Gemma-3-270M) through real HTTP: lazy loads, one load for many first requests, room made by
unloading the least recently used idle model, pinned models, a stream never cut to make room,
ttl, failed loads, the load/unload endpoints, too-large models, templates and the footprint
estimate against the measured figure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec
from tests.conftest import REPO, Server, start_server, stop_server
from tests.e2e.sse import read_events
from tests.e2e.test_metrics import scrape, value
from tests.openapi import validate

GEMMA_CONFIG = REPO / "configs" / "gemma-3-270m.yaml"
GEMMA_TEMPLATE = yaml.safe_load(GEMMA_CONFIG.read_text())["chat_template"]
SMOL, GEMMA = "smol", "gemma"
MiB = 2**20


def gguf_of(model: str) -> Path:
    """The GGUF file of SMOL or GEMMA (resolved when a test runs: the vLLM venv that collects
    these tests has neither)."""
    return ModelSpec.from_yaml(DEFAULT_CONFIG if model == SMOL else GEMMA_CONFIG).gguf_path()


def write_model(folder: Path, model_id: str, gguf: str | Path, **extra: Any) -> None:
    """One model YAML over SMOL's or GEMMA's file (or a path): 1024 tokens x 2 slots, no prompt
    cache (so that the whole footprint is what loading allocates), plus `extra` keys."""
    spec: dict[str, Any] = {
        "id": model_id, "gguf": {"path": str(gguf_of(gguf) if isinstance(gguf, str) else gguf)},
        "context_length": 1024,
        "llamacpp": {"parallel": 2, "n_batch": 64, "prompt_cache_mib": 0}}
    if gguf == GEMMA:
        spec["chat_template"] = GEMMA_TEMPLATE
    folder.mkdir(exist_ok=True)
    (folder / f"{model_id}.yaml").write_text(yaml.safe_dump({**spec, **extra}))


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[Server, httpx.Client]:
        server = start_server(tmp_path, "--models-dir", str(tmp_path / "models"), *args,
                              env=env)
        started.append(server)
        # As long as the server's own wait for a load (load_timeout, 300 s): a request that
        # loads a model on a busy machine gets the server's answer, not the client's timeout.
        return server, httpx.Client(base_url=server.base_url, timeout=300)

    yield start
    for server in started:
        stop_server(server)


def chat(http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 4, "temperature": 0, **extra})


def models(http: httpx.Client) -> dict[str, dict[str, Any]]:
    body = http.get("/v1/models").json()
    validate(body, "ListModelsResponse")
    return {m["id"]: m for m in body["data"]}


def statuses(http: httpx.Client) -> dict[str, str]:
    return {model_id: m["status"] for model_id, m in models(http).items()}


def test_lazy_load_once_for_eight_first_requests_and_the_estimate_is_close(
        tmp_path: Path, serve: Any) -> None:
    write_model(tmp_path / "models", "smol", SMOL)
    write_model(tmp_path / "models", "gemma", GEMMA)
    _, http = serve()
    before = models(http)
    assert {m["status"] for m in before.values()} == {"unloaded"}
    assert {m["memory"] for m in before.values()} == {"estimated"}
    assert http.get("/health/ready").status_code == 200  # nothing is preloaded in a dir

    seen: set[str] = set()
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(chat, http, "gemma") for _ in range(8)]
        while not all(a.done() for a in answers):
            seen.add(statuses(http)["gemma"])
            time.sleep(0.02)
    assert [a.result().status_code for a in answers] == [200] * 8
    assert "loading" in seen
    samples = scrape(http)
    assert value(samples, "lokal_model_loads_total", model="gemma", result="success") == 1
    assert value(samples, "lokal_requests_waiting_for_model", model="gemma") == 0
    assert statuses(http) == {"smol": "unloaded", "gemma": "loaded"}

    assert chat(http, "smol").status_code == 200
    after = models(http)
    for model_id in ("smol", "gemma"):
        assert after[model_id]["status"] == "loaded"
        assert after[model_id]["memory"] == "measured"
        estimated, measured = before[model_id]["memory_bytes"], after[model_id]["memory_bytes"]
        assert abs(estimated - measured) <= 0.25 * measured, (model_id, estimated, measured)
    assert value(scrape(http), "lokal_models_loaded") == 2


def test_each_model_renders_its_own_template(tmp_path: Path, serve: Any) -> None:
    import llama_cpp

    write_model(tmp_path / "models", "smol", SMOL)
    write_model(tmp_path / "models", "gemma", GEMMA)
    _, http = serve()
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Name a colour."}]
    expected = {
        # SmolLM2's template, from its GGUF (ChatML with the system turn as given).
        "smol": (SMOL, "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n"
                       "Name a colour.<|im_end|>\n<|im_start|>assistant\n", True),
        # Gemma's turn format, from the YAML: the system text opens the first user turn.
        "gemma": (GEMMA, "<bos><start_of_turn>user\nAnswer briefly.\n\nName a colour."
                         "<end_of_turn>\n<start_of_turn>model\n", False),
    }
    for model_id, (gguf, text, add_bos) in expected.items():
        vocab = llama_cpp.Llama(model_path=str(gguf_of(gguf)), vocab_only=True, verbose=False)
        tokens = vocab.tokenize(text.encode(), add_bos, True)
        r = chat(http, model_id, messages=messages)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(tokens), model_id
    shown = models(http)
    assert (shown["smol"]["chat_template"], shown["gemma"]["chat_template"]) == \
        ("model", "config")


def test_room_is_made_by_unloading_the_least_recently_used_idle_model(
        tmp_path: Path, serve: Any) -> None:
    # ~160 MiB, ~335 MiB, ~335 MiB: any model beside SmolLM2 fits in 600 MiB, all three not.
    for model_id, gguf in (("smol", SMOL), ("gemma", GEMMA), ("gemma-b", GEMMA)):
        write_model(tmp_path / "models", model_id, gguf)
    _, http = serve("--memory-budget", "600MiB")
    for model_id in ("smol", "gemma", "smol"):  # gemma is now the least recently used
        assert chat(http, model_id).status_code == 200
    assert chat(http, "gemma-b").status_code == 200
    assert statuses(http) == {"smol": "loaded", "gemma": "unloaded", "gemma-b": "loaded"}
    samples = scrape(http)
    assert value(samples, "lokal_model_unloads_total", model="gemma", reason="capacity") == 1
    assert value(samples, "lokal_model_unloads_total", model="smol", reason="capacity") == 0
    assert value(samples, "lokal_memory_budget_bytes", device="cpu") == 600 * MiB


def test_a_pinned_model_survives_though_least_recently_used(
        tmp_path: Path, serve: Any) -> None:
    write_model(tmp_path / "models", "smol", SMOL, pinned=True)
    write_model(tmp_path / "models", "gemma", GEMMA)
    write_model(tmp_path / "models", "gemma-b", GEMMA)
    _, http = serve("--memory-budget", "600MiB")
    for model_id in ("smol", "gemma", "gemma", "gemma-b"):
        assert chat(http, model_id).status_code == 200
    assert statuses(http) == {"smol": "loaded", "gemma": "unloaded", "gemma-b": "loaded"}
    assert models(http)["smol"]["pinned"] is True


def test_a_long_stream_ends_with_done_while_another_model_waits_for_its_memory(
        tmp_path: Path, serve: Any) -> None:
    write_model(tmp_path / "models", "smol", SMOL)
    write_model(tmp_path / "models", "gemma", GEMMA)
    _, http = serve("--memory-budget", "400MiB")  # one model at a time
    events: list[Any] = []
    stream_done = threading.Event()
    ended: dict[str, float] = {}

    def long_stream() -> None:
        with http.stream("POST", "/v1/completions", json={
                "model": "smol", "prompt": "Once upon a time", "max_tokens": 300,
                "stream": True, "logit_bias": {"0": -100, "2": -100}}) as r:
            assert r.status_code == 200
            got, _ = read_events(r)
            events.extend(got)
        ended["stream"] = time.monotonic()
        stream_done.set()

    streaming = threading.Thread(target=long_stream)
    streaming.start()
    deadline = time.monotonic() + 300
    while statuses(http)["smol"] != "loaded":
        assert time.monotonic() < deadline and streaming.is_alive(), "smol never loaded"
        time.sleep(0.02)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lambda: (chat(http, "gemma"), time.monotonic()))
        # Wait for the request to be queued for gemma's memory (not a fixed time, which a busy
        # machine can spend before the request even arrives), then check what holds meanwhile.
        deadline = time.monotonic() + 120
        while value(samples := scrape(http), "lokal_requests_waiting_for_model",
                    model="gemma") < 1 and not waiting.done():
            assert time.monotonic() < deadline, "the gemma request never waited for memory"
            time.sleep(0.02)
        assert not stream_done.is_set(), "the stream was too short to test anything"
        assert not waiting.done(), waiting.result()[0].text
        assert value(samples, "lokal_requests_waiting_for_model", model="gemma") == 1
        assert statuses(http) == {"smol": "loaded", "gemma": "unloaded"}
        answer, answered_at = waiting.result(timeout=300)
    streaming.join()
    assert answer.status_code == 200, answer.text
    assert answered_at > ended["stream"]
    assert not any("error" in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(len(e["choices"][0]["text"]) > 0 for e in events) > 100
    assert statuses(http) == {"smol": "unloaded", "gemma": "loaded"}


def test_failures_ttl_and_the_load_and_unload_endpoints(tmp_path: Path, serve: Any) -> None:
    folder = tmp_path / "models"
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(gguf_of(SMOL).read_bytes()[:20 * MiB])  # header intact, tensors cut short
    write_model(folder, "smol", SMOL, ttl=2)
    write_model(folder, "broken", broken)
    write_model(folder, "pinned", SMOL, pinned=True)
    write_model(folder, "giant", SMOL, context_length=32768, llamacpp={"parallel": 64})
    server, http = serve("--memory-budget", "4GiB")
    assert "giant needs" in server.log_text() and "cannot be loaded" in server.log_text()

    r = chat(http, "giant")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_too_large"
    assert "4.0 GiB" in r.json()["error"]["message"]

    r = chat(http, "broken")
    assert r.status_code == 503, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == "model_load_failed"
    shown = models(http)["broken"]
    assert shown["status"] == "failed" and shown["error"]
    assert chat(http, "smol").status_code == 200  # every other model keeps serving
    retried = http.post("/v1/models/broken/load")
    assert retried.status_code == 503 and retried.json()["error"]["code"] == "model_load_failed"
    assert value(scrape(http), "lokal_model_loads_total", model="broken", result="failure") == 2

    loaded = http.post("/v1/models/pinned/load")
    assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"
    refused = http.post("/v1/models/pinned/unload")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_pinned"
    forced = http.post("/v1/models/pinned/unload", params={"force": "true"})
    assert forced.status_code == 200 and forced.json()["status"] == "unloaded"
    assert http.post("/v1/models/nope/load").status_code == 404

    deadline = time.monotonic() + 120  # ttl is 2 s; the rest is room for a busy machine
    while statuses(http)["smol"] != "unloaded":
        assert time.monotonic() < deadline, "ttl did not unload the idle model"
        time.sleep(0.2)
    samples = scrape(http)
    assert value(samples, "lokal_model_unloads_total", model="smol", reason="idle") == 1
    assert value(samples, "lokal_model_unloads_total", model="pinned", reason="request") == 1


@pytest.mark.backends("vllm")
def test_a_vllm_model_loads_on_demand_unloads_and_loads_again(
        tmp_path: Path, serve: Any, backend_name: str) -> None:
    from tests.conftest import VLLM_CONFIG, VLLM_ENV

    config = yaml.safe_load(VLLM_CONFIG.read_text())
    spec = ModelSpec.from_yaml(VLLM_CONFIG)
    assert spec.vllm is not None and spec.base_dir is not None
    config["vllm"]["model"] = str((spec.base_dir / spec.vllm.model).resolve())
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vllm.yaml").write_text(yaml.safe_dump(config))
    _, http = serve("--backend", "vllm", env=VLLM_ENV)
    model = config["id"]
    before = models(http)[model]
    assert (before["status"], before["backend"], before["memory"]) == \
        ("unloaded", "vllm", "estimated")
    assert chat(http, model).status_code == 200
    assert models(http)[model]["status"] == "loaded"
    unloaded = http.post(f"/v1/models/{model}/unload")
    assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
    again = chat(http, model)
    assert again.status_code == 200, again.text
    samples = scrape(http)
    assert value(samples, "lokal_model_loads_total", model=model, result="success") == 2
    assert value(samples, "lokal_model_unloads_total", model=model, reason="request") == 1
