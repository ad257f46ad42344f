"""vLLM's metric names for models on lokal's llama.cpp engine, with vLLM's labels, buckets
and meaning, so that inference routers that read vLLM pods (the Gateway API Inference
Extension's endpoint picker, llm-d) can score lokal's CPU pods too. Models on the vLLM engine
publish vLLM's own series instead."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lokal.backends.base import Usage
from lokal.backends.pool import ModelPool

# vLLM 0.x's defaults (vllm/v1/metrics/buckets.py), so dashboards and autoscalers built for
# vLLM read lokal's histograms the same way.
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
LABELS = ["model_name", "engine"]
ENGINE = "0"
"""vLLM labels each series with its engine-core index; lokal runs one engine per model."""
BLOCK_SIZE = 1
"""llama.cpp's KV cache is made of one-token cells: a "block" here is one cell."""


class VllmSeries:
    """The histograms and counters, observed by Metrics.observe for llama.cpp-engine models."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"vllm:{name}", doc, LABELS, buckets=buckets, registry=registry)

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(f"vllm:{name}", doc, [*LABELS, *extra], registry=registry)

        self.ttft = histogram("time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue = histogram("request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.",
                               REQUEST_LATENCY_BUCKETS)
        self.prefix_queries = counter(
            "prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = counter(
            "prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("generation_tokens",
                                         "Number of generation tokens processed.")
        self.success = counter("request_success", "Count of successfully processed requests.",
                               "finished_reason")

    def usage(self, model: str, usage: Usage, prompt_counted: bool) -> None:
        """A choice's usage: generated tokens always, the prompt once per request."""
        self.generation_tokens.labels(model, ENGINE).inc(usage.completion_tokens)
        if not prompt_counted:
            self.prompt_tokens.labels(model, ENGINE).inc(usage.prompt_tokens)
            self.prefix_queries.labels(model, ENGINE).inc(usage.prompt_tokens)
            self.prefix_hits.labels(model, ENGINE).inc(usage.cached_tokens)

    def finished(self, model: str, started: float, reason: str) -> None:
        self.e2e.labels(model, ENGINE).observe(time.perf_counter() - started)
        # vLLM's words: "stop" for a stop string or EOS, "length" for max_tokens
        self.success.labels(model, ENGINE, "length" if reason == "length" else "stop").inc()


class VllmMetrics(Collector):
    """Every vllm:* family on lokal's /metrics, one family per name: the series observed for
    llama.cpp-engine models, their gauges, and vLLM's own series (names, labels, buckets as
    vLLM made them, from the process-wide registry its engine writes to) for vLLM-engine
    models, merged so that no name is exposed twice."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool
        self.registry = CollectorRegistry(auto_describe=False)
        self.series = VllmSeries(self.registry)
        self.gauges = VllmGauges(pool)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for family in (*self.registry.collect(), *self.gauges.collect(),
                       *self._from_vllm_engines()):
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = family
            else:
                known.samples.extend(family.samples)
        yield from merged.values()

    def _from_vllm_engines(self) -> Iterator[Metric]:
        if not any(m.vllm_series == "engine" for m in self.pool.models()):
            return
        from prometheus_client import REGISTRY

        for family in REGISTRY.collect():
            if family.name.startswith("vllm:"):
                yield family


class VllmGauges(Collector):
    """Read at scrape time from each llama.cpp engine's stats(): running, waiting, KV-cache
    use, the KV geometry, and the loaded models as LoRA adapters (so a router's LoRA-affinity
    scorer prefers a pod that already holds the requested model)."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("vllm:num_requests_running",
                                    "Number of requests in model execution batches.",
                                    labels=LABELS)
        waiting = GaugeMetricFamily("vllm:num_requests_waiting",
                                    "Number of requests waiting to be processed.",
                                    labels=LABELS)
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc",
                               "KV-cache usage. 1 means 100 percent usage.", labels=LABELS)
        cache = GaugeMetricFamily("vllm:cache_config_info",
                                  "Information of the LLMEngine CacheConfig",
                                  labels=["block_size", "num_gpu_blocks", "engine",
                                          "model_name"])
        lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "waiting_lora_adapters",
                                         "running_lora_adapters"])
        every = self.pool.stats()
        loaded = []
        for model in self.pool.models():
            stats = every.get(model.id)
            if model.vllm_series != "lokal" or stats is None:
                continue
            loaded.append(model.id)
            labels = [model.id, ENGINE]
            running.add_metric(labels, stats.running)
            waiting.add_metric(labels, stats.waiting)
            usage = stats.kv_cells_busy / stats.kv_cells_total if stats.kv_cells_total else 0.0
            kv.add_metric(labels, usage)
            cache.add_metric([str(BLOCK_SIZE), str(stats.kv_cells_total), ENGINE, model.id], 1)
        if loaded:
            # max_lora: how many models this pod can hold at once, as far as it knows
            states = self.pool.states()
            most = self.pool.max_loaded or len(states)
            waiting_models = sorted(s.id for s in states if s.waiting)
            lora.add_metric([str(most), ",".join(waiting_models), ",".join(sorted(loaded))],
                            time.time())
        yield from (running, waiting, kv, cache, lora)
