"""/metrics through real HTTP: the lokal_* series move after real requests on the real model."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL
from tests.e2e.sse import read_events

COUNTING = ", ".join(str(i) for i in range(1, 21)) + ","

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def poll(http: httpx.Client, condition: Callable[[Samples], bool],
         seconds: float = 60) -> Samples | None:
    """Scrapes until `condition` holds (the engine updates its gauges a step later)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples = scrape(http)
        if condition(samples):
            return samples
        time.sleep(0.1)
    return None


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_every_series_is_named_lokal_and_labelled_by_model(http: httpx.Client) -> None:
    samples = scrape(http)
    ours = {n for n in names(samples) if not n.startswith(("process_", "python_", "vllm:"))}
    assert ours and all(n.startswith("lokal_") for n in ours), ours
    for family in ("lokal_requests_running", "lokal_requests_waiting", "lokal_slots",
                   "lokal_prefix_cache_hit_tokens_total", "lokal_requests_cancelled_total",
                   "lokal_model_load_seconds"):
        assert (family, frozenset({("model", MODEL)})) in samples, family
    assert value(samples, "lokal_model_load_seconds", model=MODEL) > 0
    assert value(samples, "lokal_ready") == 1


def test_info_metric_names_engine_device_and_version(http: httpx.Client) -> None:
    version = http.get("/version").json()["version"]
    served = http.get("/v1/models").json()["data"][0]  # the same test runs on every engine
    samples = scrape(http)
    info = [dict(labels) for name, labels in samples if name == "lokal_info"]
    assert info == [{"model": MODEL, "engine": served["backend"], "device": served["device"],
                     "version": version}]
    assert served["backend"] in ("llamacpp", "vllm") and version != "0+unknown"


def test_streamed_chat_moves_counters_tokens_and_latencies(http: httpx.Client) -> None:
    before = scrape(http)
    # Greedy, so the text is the same every run: a sampled first token that is half a UTF-8
    # character would arrive together with the next one and give no gap of its own.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to five."}],
            "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events, _ = read_events(r)
    usage = events[-1]["usage"]
    after = scrape(http)

    ok = {"model": MODEL, "endpoint": "/v1/chat/completions", "status": "200"}
    assert value(after, "lokal_requests_total", **ok) == value(before, "lokal_requests_total",
                                                               **ok) + 1
    for name, expected in (("lokal_prompt_tokens_total", usage["prompt_tokens"]),
                           ("lokal_generation_tokens_total", usage["completion_tokens"])):
        moved = value(after, name, model=MODEL) - value(before, name, model=MODEL)
        assert moved == expected, name
    ttft = "lokal_time_to_first_token_seconds_count"
    assert value(after, ttft, model=MODEL) == value(before, ttft, model=MODEL) + 1
    itl = "lokal_inter_token_latency_seconds_count"
    assert value(after, itl, model=MODEL) - value(before, itl, model=MODEL) >= (
        usage["completion_tokens"] - 1)
    duration = "lokal_request_duration_seconds_count"
    labels = {"model": MODEL, "endpoint": "/v1/chat/completions"}
    assert value(after, duration, **labels) == value(before, duration, **labels) + 1
    assert value(after, "lokal_request_duration_seconds_sum", **labels) > value(
        before, "lokal_request_duration_seconds_sum", **labels)


def test_plain_completion_counts_tokens_from_usage(http: httpx.Client,
                                                   client: openai.OpenAI) -> None:
    before = scrape(http)
    reply = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6)
    after = scrape(http)
    assert reply.usage is not None
    moved = value(after, "lokal_generation_tokens_total", model=MODEL) - value(
        before, "lokal_generation_tokens_total", model=MODEL)
    assert moved == reply.usage.completion_tokens
    ok = {"model": MODEL, "endpoint": "/v1/completions", "status": "200"}
    assert value(after, "lokal_requests_total", **ok) == value(before, "lokal_requests_total",
                                                               **ok) + 1


def test_errors_are_counted_by_status_and_route_template(http: httpx.Client) -> None:
    before = scrape(http)
    assert http.post("/v1/chat/completions", json={"model": MODEL}).status_code == 400
    assert http.get("/v1/models/no-such-model").status_code == 404
    after = scrape(http)
    bad = {"model": "", "endpoint": "/v1/chat/completions", "status": "400"}
    assert value(after, "lokal_requests_total", **bad) == value(before, "lokal_requests_total",
                                                                **bad) + 1
    # The raw path holds caller text; the label is the route's template.
    missing = {"model": "", "endpoint": "/v1/models/{model}", "status": "404"}
    assert value(after, "lokal_requests_total", **missing) == value(
        before, "lokal_requests_total", **missing) + 1


def test_no_request_text_or_ids_in_labels(http: httpx.Client) -> None:
    secret = "zebra-marmalade-7731"
    r = http.post("/v1/chat/completions", headers={"X-Request-ID": f"rid-{secret}"},
                  json={"model": MODEL, "messages": [{"role": "user", "content": secret}],
                        "max_tokens": 2})
    assert r.status_code == 200
    http.get(f"/v1/models/{secret}")
    text = http.get("/metrics").text
    assert secret not in text


def test_running_and_waiting_return_to_zero_after_a_cancelled_stream(
        http: httpx.Client) -> None:
    before = scrape(http)
    # Counting goes on until max_tokens, so the stream is surely still running when left.
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 1000, "temperature": 0,
            "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        # Keep the line iterator referenced: a dropped one is finalised at once, and that closes
        # the connection, so a fast engine would be cancelled before the gauge is read.
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                break  # got a token; stop reading, but keep the stream open
        seen_running = poll(http, lambda s: value(s, "lokal_requests_running", model=MODEL) >= 1)
    assert seen_running, "the running gauge never showed the open stream"
    idle = poll(http, lambda s: value(s, "lokal_requests_running", model=MODEL) == 0
                and value(s, "lokal_requests_waiting", model=MODEL) == 0)
    assert idle, "running/waiting gauges did not return to zero"
    after = idle
    cancelled = "lokal_requests_cancelled_total"
    assert value(after, cancelled, model=MODEL) > value(before, cancelled, model=MODEL)


def test_histogram_buckets_fit_llm_latencies(http: httpx.Client) -> None:
    samples = scrape(http)

    def bounds(name: str) -> set[float]:
        return {float(dict(labels)["le"]) for n, labels in samples
                if n == f"{name}_bucket" and dict(labels).get("model") == MODEL}

    assert {0.01, 0.1, 1.0, 10.0, 80.0} <= bounds("lokal_time_to_first_token_seconds")
    assert {0.005, 0.05, 0.5} <= bounds("lokal_inter_token_latency_seconds")
    assert {1.0, 60.0, 600.0} <= bounds("lokal_request_duration_seconds")


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


VLLM_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                   "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds")


def test_vllm_named_series_move_with_requests(http: httpx.Client, backend_name: str) -> None:
    """What Kubernetes' inference routers read from a pod, under vLLM's names: gauges that rise
    while streams decode and return to zero after, histograms that count the requests, prefix
    cache counters, the KV geometry and the loaded models as LoRA adapters."""
    before = scrape(http)
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 120, "temperature": 0,
            "stream": True}
    streams = 3
    busy: list[Samples] = []

    def run() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=120) as c, \
                c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                pass

    with ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(run) for _ in range(streams)]
        seen = poll(http, lambda s: total(s, "vllm:num_requests_running") >= 1
                    and total(s, "vllm:kv_cache_usage_perc") > 0, seconds=60)
        busy.append(seen or {})
        for f in futures:
            f.result()
    assert busy[0], "running and KV usage never rose while streams decoded"
    assert 0 < total(busy[0], "vllm:kv_cache_usage_perc") <= 1
    idle = poll(http, lambda s: total(s, "vllm:num_requests_running") == 0
                and total(s, "vllm:num_requests_waiting") == 0
                and total(s, "vllm:kv_cache_usage_perc") == 0)
    assert idle, "running, waiting and KV usage did not return to zero"
    for name in VLLM_HISTOGRAMS:
        grew = total(idle, f"{name}_count") - total(before, f"{name}_count")
        assert grew >= streams if name != "vllm:inter_token_latency_seconds" else grew > 0, name
    queried = total(idle, "vllm:prefix_cache_queries_total") - \
        total(before, "vllm:prefix_cache_queries_total")
    assert queried >= streams * 20  # each prompt is ~60 tokens; every one is looked up
    hits = [k for k in idle if k[0] == "vllm:prefix_cache_hits_total"]
    assert hits
    types = [ln for ln in http.get("/metrics").text.splitlines() if ln.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a metric family is exposed twice"
    info = [dict(labels) for name, labels in idle if name == "vllm:cache_config_info"]
    assert info and all({"block_size", "num_gpu_blocks", "engine"} <= i.keys() for i in info)
    if backend_name == "llamacpp":
        served = http.get(f"/v1/models/{MODEL}").json()
        slots = value(idle, "lokal_slots", model=MODEL)
        assert info == [{"block_size": "1", "engine": "0", "model_name": MODEL,
                         "num_gpu_blocks": str(int(slots) * served["context_length"])}]
        lora = [dict(labels) for name, labels in idle if name == "vllm:lora_requests_info"]
        assert [entry["running_lora_adapters"] for entry in lora] == [MODEL]
