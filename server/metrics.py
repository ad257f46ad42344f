"""Prometheus metrics, one `lokal_*` scheme for every engine: objects, observe helpers, the
request-counting middleware. Latencies and tokens are measured here, from the chunk stream."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.backends.base import Chunk
from lokal.backends.pool import ModelPool
from lokal.server.vllm_metrics import ENGINE, VllmMetrics

# Buckets for LLM work: a first token in tens of ms (cached, small model) to a minute (long
# prompt on CPU); tokens every few ms (GPU) to a second (CPU under load); whole requests up
# to the 10-minute default timeout.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
               1.0, 2.5)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                   600.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric of one app, in the app's own registry (never the global one, so two apps
    in one process, as in tests, do not collide)."""

    def __init__(self, pool: ModelPool, version: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lokal_requests", "HTTP requests by endpoint and status code",
                                ["model", "endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "lokal_request_duration_seconds", "Time from request to the last byte sent",
            ["model", "endpoint"], buckets=REQUEST_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            "lokal_time_to_first_token_seconds",
            "Time from the request's arrival to its first generated token",
            ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "lokal_inter_token_latency_seconds", "Time between two tokens of one choice",
            ["model"], buckets=ITL_BUCKETS, registry=r)
        self.queue_time = Histogram(
            "lokal_queue_time_seconds", "Time a request waited for an engine slot",
            ["model"], buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lokal_prompt_tokens", "Prompt tokens processed",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("lokal_generation_tokens", "Tokens generated",
                                         ["model"], registry=r)
        vllm = VllmMetrics(pool)
        self.vllm = vllm.series
        r.register(ProcessCollector(registry=None))
        r.register(EngineCollector(pool, version))
        r.register(vllm)

    def watch(self, model: str, started: float, vllm_names: bool = False) -> GenerationWatch:
        """A watch over one generation's chunks (`started` is the request's time.perf_counter
        at arrival). With `vllm_names` (a llama.cpp-engine model) the vllm:* series are
        observed too."""
        return GenerationWatch(self, model, started, vllm_names)


class GenerationWatch:
    """Times one generation's chunks as they arrive and counts the tokens the engine reports;
    the caller passes every chunk to chunk() and calls ended() when the stream ran out (a
    plain call per chunk: no generator of its own in the streaming path)."""

    def __init__(self, metrics: Metrics, model: str, started: float, vllm_names: bool) -> None:
        self.metrics, self.model, self.started, self.vllm_names = (metrics, model, started,
                                                                   vllm_names)
        self.first_token_seen = False
        self.last_token_at: dict[int, float] = {}
        self.prompt_counted = False
        self.finish: str | None = None
        self.inter_token_latency = metrics.inter_token_latency.labels(model)  # once per stream
        self.vllm_itl = metrics.vllm.itl.labels(model, ENGINE) if vllm_names else None

    def chunk(self, chunk: Chunk) -> None:
        m, model = self.metrics, self.model
        now = time.perf_counter()
        if chunk.queue_seconds is not None:  # engines that queue report the wait
            m.queue_time.labels(model).observe(chunk.queue_seconds)
            if self.vllm_names:
                m.vllm.queue.labels(model, ENGINE).observe(chunk.queue_seconds)
        tokens = len(chunk.token_ids) or (1 if chunk.text else 0)
        if tokens:
            if not self.first_token_seen:
                self.first_token_seen = True
                m.time_to_first_token.labels(model).observe(now - self.started)
                if self.vllm_names:
                    m.vllm.ttft.labels(model, ENGINE).observe(now - self.started)
            previous = self.last_token_at.get(chunk.index)
            if previous is not None:
                gap = (now - previous) / tokens
                for _ in range(tokens):
                    self.inter_token_latency.observe(gap)
                    if self.vllm_itl is not None:
                        self.vllm_itl.observe(gap)
            self.last_token_at[chunk.index] = now
        if chunk.usage is not None:
            m.generation_tokens.labels(model).inc(chunk.usage.completion_tokens)
            if self.vllm_names:
                m.vllm.usage(model, chunk.usage, self.prompt_counted)
            if not self.prompt_counted:  # n choices of one prompt share it
                self.prompt_counted = True
                m.prompt_tokens.labels(model).inc(chunk.usage.prompt_tokens)
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason

    def ended(self) -> None:
        """The stream ran to its end (not cancelled)."""
        if self.vllm_names and self.finish is not None:  # as vLLM counts finished requests
            self.metrics.vllm.finished(self.model, self.started, self.finish)


class EngineCollector(Collector):
    """Read at scrape time from each engine's stats(), so gauges are never stale: running,
    waiting, slots, KV-cache use, prefix-cache hits, cancellations; plus lokal_info."""

    def __init__(self, pool: ModelPool, version: str) -> None:
        self.pool = pool
        self.version = version

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("lokal", "Engine, device and version serving each model",
                                labels=["model", "engine", "device", "version"])
        ready = GaugeMetricFamily("lokal_ready", "1 once every model is loaded")
        ready.add_metric([], 1.0 if self.pool.ready else 0.0)
        running = GaugeMetricFamily("lokal_requests_running", "Requests being decoded",
                                    labels=["model"])
        waiting = GaugeMetricFamily("lokal_requests_waiting", "Requests queued for a slot",
                                    labels=["model"])
        slots = GaugeMetricFamily("lokal_slots", "Sequences the engine decodes together",
                                  labels=["model"])
        kv = GaugeMetricFamily("lokal_kv_cache_usage_ratio", "KV-cache cells in use, 0..1",
                               labels=["model"])
        hits = CounterMetricFamily("lokal_prefix_cache_hit_tokens",
                                   "Prompt tokens reused from the prefix cache", labels=["model"])
        ram = GaugeMetricFamily("lokal_prompt_cache_ram_bytes", "Host RAM holding KV saved "
                                "from evicted slots, restored for a later matching prefix",
                                labels=["model"])
        ram_hits = CounterMetricFamily("lokal_prompt_cache_ram_hit_tokens", "Prompt tokens "
                                       "restored from the RAM prompt cache", labels=["model"])
        up = GaugeMetricFamily("lokal_engine_up", "1 while the model's engine can serve, 0 once "
                               "it died (a restart is needed)", labels=["model"])
        cancelled = CounterMetricFamily("lokal_requests_cancelled",
                                        "Generations stopped early (client gone, timeout, "
                                        "shutdown)", labels=["model"])
        drafts = CounterMetricFamily("lokal_spec_drafts", "Speculative drafts (prompt lookup) "
                                     "checked by the model", labels=["model"])
        drafted = CounterMetricFamily("lokal_spec_draft_tokens", "Tokens in those drafts",
                                      labels=["model"])
        accepted = CounterMetricFamily("lokal_spec_accepted_tokens", "Drafted tokens the model "
                                       "took (each saves a decode step)", labels=["model"])
        yield from self.pool_metrics()
        every = self.pool.stats()
        for model in self.pool.models():
            info.add_metric([model.id, model.backend, model.device, self.version], {})
            stats = every.get(model.id)
            if stats is None:
                continue
            running.add_metric([model.id], stats.running)
            waiting.add_metric([model.id], stats.waiting)
            slots.add_metric([model.id], stats.slots_total)
            if stats.kv_cells_total > 0:
                kv.add_metric([model.id], stats.kv_cells_used / stats.kv_cells_total)
            hits.add_metric([model.id], stats.prefix_cache_hit_tokens)
            cancelled.add_metric([model.id], stats.cancelled)
            up.add_metric([model.id], 0.0 if stats.engine_error else 1.0)
            ram.add_metric([model.id], stats.ram_cache_bytes)
            ram_hits.add_metric([model.id], stats.ram_cache_hit_tokens)
            drafts.add_metric([model.id], stats.spec_drafts)
            drafted.add_metric([model.id], stats.spec_draft_tokens)
            accepted.add_metric([model.id], stats.spec_accepted_tokens)
        yield from (info, ready, running, waiting, slots, kv, hits, cancelled, up, ram, ram_hits,
                    drafts, drafted, accepted)

    def pool_metrics(self) -> Iterator[Metric]:
        """The model pool: what is loaded, the memory each model and the budget hold, loads,
        unloads and the requests waiting for a model."""
        pool = self.pool
        loaded = GaugeMetricFamily("lokal_models_loaded", "Models loaded now")
        status = GaugeMetricFamily("lokal_model_status", "1 for the status each configured "
                                   "model is in", labels=["model", "status"])
        memory = GaugeMetricFamily("lokal_model_memory_bytes", "Memory charged to the budget "
                                   "per model (estimated before its first load, measured "
                                   "after)", labels=["model", "device", "source"])
        budget = GaugeMetricFamily("lokal_memory_budget_bytes", "Memory loaded models may "
                                   "hold", labels=["device"])
        seconds = GaugeMetricFamily("lokal_model_load_seconds", "Time the model's last load "
                                    "took", labels=["model"])
        waiting = GaugeMetricFamily("lokal_requests_waiting_for_model", "Requests waiting for "
                                    "their model to load or for room to load it",
                                    labels=["model"])
        loads = CounterMetricFamily("lokal_model_loads", "Model loads by result",
                                    labels=["model", "result"])
        unloads = CounterMetricFamily("lokal_model_unloads", "Model unloads by reason: idle "
                                      "(ttl), capacity (room for another), request",
                                      labels=["model", "reason"])
        states = pool.states()
        loaded.add_metric([], sum(1 for s in states if s.status == "loaded"))
        for state in states:
            status.add_metric([state.id, str(state.status)], 1.0)
            if state.status in ("loading", "loaded", "unloading"):
                memory.add_metric([state.id, state.device,
                                   "measured" if state.measured else "estimated"],
                                  state.memory_bytes)
            waiting.add_metric([state.id], state.waiting)
        for device, size in pool.budgets.items():
            budget.add_metric([device], size)
        for model_id, took in pool.load_seconds.items():
            seconds.add_metric([model_id], took)
        for (model_id, result), count in pool.loads.items():
            loads.add_metric([model_id, result], count)
        for (model_id, reason), count in pool.unloads.items():
            unloads.add_metric([model_id, reason], count)
        yield from (loaded, status, memory, budget, seconds, waiting, loads, unloads)


class RequestMetricsMiddleware:
    """Counts every HTTP request by endpoint (the route's template, never the raw path, so
    label values stay few) and status, and times it to its last byte, streams included. The
    model label is the served model's id, set by the route once it resolved the name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["started"] = started = time.perf_counter()
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                endpoint = self.endpoint(scope)
                model = str(state.get("model", ""))
                metrics.requests.labels(model, endpoint, str(status)).inc()
                metrics.request_duration.labels(model, endpoint).observe(
                    time.perf_counter() - started)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # before the last byte leaves, so a client's next scrape sees it
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            record()

    def endpoint(self, scope: Scope) -> str:
        """The route that served the request; for one refused before routing (401, 413),
        the OpenAPI path template its path fits."""
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path_format", "other"))
        if self.templates is None:
            paths = [*scope["app"].openapi().get("paths", {}), "/metrics"]
            self.templates = [(re.compile(re.sub(r"\\{[^/]+?\\}", ".+", re.escape(p))), p)
                              for p in paths]
        for pattern, template in self.templates:
            if pattern.fullmatch(scope["path"]):
                return template
        return "other"
