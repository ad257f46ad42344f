"""The llama.cpp embedder on a tiny random-weight GGUF: inputs of different requests share one
llama_decode (up to the step's limits), each gets its own sequence's vector, and cancelled or
unfinished work is answered, never lost."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lokal.backends.base import EmbeddingRequest, TextPrompt, TokenPrompt
from lokal.backends.errors import Busy, InputTooLong, InvalidParameter
from lokal.backends.spec import EmbeddingOptions
from tests.tiny_gguf import N_EMBD, char_ids, write_tiny_gguf


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    path = write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")
    loaded = LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                        verbose=False)
    yield loaded
    loaded.close()


def _embedder(model: Any, **options: Any) -> Any:
    from lokal.backends.llamacpp.embedder import Embedder

    return Embedder(model, EmbeddingOptions(enabled=True, **options), n_threads=1,
                    max_input=10_000)


class Collector:
    """A thread-safe `done` callback target, as the event loop's resolver is."""

    def __init__(self, n: int) -> None:
        self.vectors: dict[int, tuple[float, ...]] = {}
        self.errors: dict[int, str] = {}
        self._left = n
        self._all = threading.Event()

    def done(self, i: int) -> Any:
        def call(vector: tuple[float, ...] | None, error: str | None) -> None:
            if vector is not None:
                self.vectors[i] = vector
            if error is not None:
                self.errors[i] = error
            self._left -= 1
            if self._left == 0:
                self._all.set()
        return call

    def wait(self) -> None:
        assert self._all.wait(60), "the embedder did not answer every input"


def _jobs(texts: list[str], request_id: str, collector: Collector, first: int) -> list[Any]:
    from lokal.backends.llamacpp.embedder import EmbedJob

    return [EmbedJob(request_id, [1, *char_ids(t)], collector.done(first + i))
            for i, t in enumerate(texts)]


def _cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_inputs_of_different_requests_share_one_decode(model: Any) -> None:
    texts = ["alpha", "beta gamma", "delta"]
    alone = []
    for text in texts:  # reference vectors, one step each
        emb = _embedder(model)
        c = Collector(1)
        emb.submit(_jobs([text], "solo", c, 0))
        emb.start()
        c.wait()
        emb.close()
        alone.append(c.vectors[0])

    emb = _embedder(model)
    c = Collector(3)
    # Queued before the thread starts, so the first step sees all of them: two requests.
    emb.submit(_jobs(texts[:2], "req-a", c, 0))
    emb.submit(_jobs(texts[2:], "req-b", c, 2))
    emb.start()
    c.wait()
    emb.close()
    assert (emb.steps_total, emb.inputs_total) == (1, 3)
    assert not c.errors
    for i, want in enumerate(alone):
        got = c.vectors[i]
        assert len(got) == N_EMBD
        assert math.isclose(math.sqrt(sum(x * x for x in got)), 1.0, rel_tol=1e-5)
        assert _cosine(got, want) > 0.9999, f"input {i} got another sequence's vector"
    assert _cosine(alone[0], alone[1]) < 0.9999


def test_a_step_holds_at_most_batch_inputs_and_batch_tokens(model: Any) -> None:
    emb = _embedder(model, batch_inputs=2)
    c = Collector(5)
    emb.submit(_jobs(["a", "b", "c", "d", "e"], "r", c, 0))
    emb.start()
    c.wait()
    emb.close()
    assert (emb.steps_total, emb.inputs_total) == (3, 5)

    emb = _embedder(model, batch_tokens=16, batch_inputs=4)
    c = Collector(3)
    emb.submit(_jobs(["x" * 9, "y" * 9, "z"], "r", c, 0))  # 10, 10 and 2 tokens with BOS
    emb.start()
    c.wait()
    emb.close()
    assert emb.steps_total == 2 and len(c.vectors) == 3


def test_cancelled_inputs_are_skipped_and_close_answers_the_rest(model: Any) -> None:
    emb = _embedder(model)
    c = Collector(2)
    jobs = _jobs(["skip me", "never run"], "r", c, 0)
    jobs[0].cancelled.set()
    emb.submit(jobs[:1])
    emb.start()
    emb.close()  # stops before or after the cancelled job; either way nothing is decoded
    assert emb.steps_total == 0
    late = _embedder(model)
    late.submit(jobs[1:])
    late.close()  # never started: the waiting input is failed, not left hanging
    assert c.errors == {1: "the server is shutting down"}


def test_queue_limit_is_busy(model: Any) -> None:
    emb = _embedder(model, max_waiting=2)
    c = Collector(3)
    emb.submit(_jobs(["a", "b"], "r", c, 0))
    with pytest.raises(Busy):
        emb.submit(_jobs(["c"], "r2", c, 2))
    emb.close()


def test_embed_checks_inputs_before_queueing(model: Any) -> None:
    emb = _embedder(model, batch_tokens=16, batch_inputs=4)
    emb.start()
    try:
        run = asyncio.run
        result = run(emb.embed(EmbeddingRequest("r", (TextPrompt("ab"), TokenPrompt((1, 2))))))
        assert result.prompt_tokens == 3 + 2  # BOS + 2 characters, then the two ids as given
        assert len(result.vectors) == 2
        with pytest.raises(InputTooLong) as too_long:
            run(emb.embed(EmbeddingRequest("r", (TextPrompt("x" * 20),))))
        assert too_long.value.param == "input" and too_long.value.context_length == 16
        with pytest.raises(InvalidParameter, match="outside the vocabulary"):
            run(emb.embed(EmbeddingRequest("r", (TokenPrompt((10**6,)),))))
        with pytest.raises(InvalidParameter, match="empty"):
            run(emb.embed(EmbeddingRequest("r", (TokenPrompt(()),))))
        with pytest.raises(InvalidParameter, match=f"only be {N_EMBD}") as dims:
            run(emb.embed(EmbeddingRequest("r", (TextPrompt("a"),), dimensions=8)))
        assert dims.value.param == "dimensions"
        ok = run(emb.embed(EmbeddingRequest("r", (TextPrompt("a"),), dimensions=N_EMBD)))
        assert len(ok.vectors[0]) == N_EMBD
    finally:
        emb.close()

