"""The metrics watch over a chunk stream: TTFT once, inter-token gaps per choice, tokens from the
engine's usage (a prompt's tokens once for its n choices), queue time when reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from prometheus_client import generate_latest

from lokal.backends.base import Chunk, Usage
from lokal.backends.hardware import Hardware
from lokal.backends.pool import ModelPool
from lokal.backends.spec import ModelSpec
from lokal.server.metrics import Metrics


def _metrics() -> Metrics:
    spec = ModelSpec.model_validate({"id": "m", "gguf": {"path": "/nowhere.gguf"}})
    return Metrics(ModelPool([spec], Hardware((), "test")), "1.2.3")


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


async def _two_choices() -> AsyncGenerator[Chunk, None]:
    for step in range(3):
        for index in (0, 1):
            yield Chunk(index, f"c{index}s{step}", (step,))
    yield Chunk(0, finish_reason="length", usage=Usage(7, 3))
    yield Chunk(1, finish_reason="length", usage=Usage(7, 3))


async def _watched(metrics: Metrics, chunks: AsyncGenerator[Chunk, None],
                   started: float) -> int:
    """`chunks` shown to a watch as serve_generation shows them; how many there were."""
    watch = metrics.watch("m", started)
    seen = 0
    async for chunk in chunks:
        watch.chunk(chunk)
        seen += 1
    watch.ended()
    return seen


def test_the_watch_counts_prompt_once_and_every_generated_token() -> None:
    metrics = _metrics()
    seen = asyncio.run(_watched(metrics, _two_choices(), time.perf_counter()))
    assert seen == 8
    assert _value(metrics, "lokal_prompt_tokens_total", model="m") == 7
    assert _value(metrics, "lokal_generation_tokens_total", model="m") == 6
    assert _value(metrics, "lokal_time_to_first_token_seconds_count", model="m") == 1
    # 3 tokens per choice -> 2 gaps per choice
    assert _value(metrics, "lokal_inter_token_latency_seconds_count", model="m") == 4


def test_ttft_is_measured_from_the_request_start() -> None:
    metrics = _metrics()
    started = time.perf_counter() - 5.0  # the request arrived five seconds ago
    asyncio.run(_watched(metrics, _two_choices(), started))
    assert _value(metrics, "lokal_time_to_first_token_seconds_sum", model="m") >= 5.0
    assert _value(metrics, "lokal_time_to_first_token_seconds_bucket", model="m",
                  le="2.5") == 0


def test_queue_time_is_observed_when_the_engine_reports_it() -> None:
    metrics = _metrics()

    async def queued() -> AsyncGenerator[Chunk, None]:
        yield Chunk(0, "a", (1,), queue_seconds=0.3)
        yield Chunk(0, "b", (2,))
        yield Chunk(0, finish_reason="stop", usage=Usage(1, 2))

    asyncio.run(_watched(metrics, queued(), time.perf_counter()))
    assert _value(metrics, "lokal_queue_time_seconds_count", model="m") == 1
    assert _value(metrics, "lokal_queue_time_seconds_sum", model="m") == 0.3


def test_before_loading_only_readiness_and_process_series() -> None:
    text = generate_latest(_metrics().registry).decode()
    assert "lokal_ready 0.0" in text
    assert "lokal_info{" not in text  # no model is loaded yet
    assert "process_resident_memory_bytes" in text
