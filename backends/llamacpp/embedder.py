"""Embeddings over llama.cpp: a second context (embeddings on, pooled) owned by one thread that
decodes the queued inputs of every request together, each input as its own sequence."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from lokal.backends.base import EmbeddingRequest, EmbeddingResult, TextPrompt, TokenPrompt
from lokal.backends.errors import Busy, EngineFailure, InputTooLong, InvalidParameter
from lokal.backends.llamacpp.step import put_row
from lokal.backends.spec import EmbeddingOptions

logger = logging.getLogger(__name__)

_POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}

Vector = tuple[float, ...]


@dataclass(slots=True)
class EmbedJob:
    """One input of one request. The engine thread calls `done` once: a vector or an error."""

    request_id: str
    tokens: list[int]
    done: Callable[[Vector | None, str | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class Embedder:
    """Owns an embeddings context beside the generation one (same weights, own KV cells)."""

    def __init__(self, model: Any, options: EmbeddingOptions, *, n_threads: int,
                 max_input: int) -> None:
        from llama_cpp._internals import LlamaContext

        params = llama_cpp.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = _POOLING[options.pooling]
        # Pooling reads a whole sequence from one micro-batch, so a step is one micro-batch.
        params.n_ctx = params.n_batch = params.n_ubatch = options.batch_tokens
        params.n_seq_max = options.batch_inputs
        params.kv_unified = True  # a step's inputs share the cells; each attends only to its own
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._model = model
        self._owner: Any = LlamaContext(model=model, params=params, verbose=False)
        self._ctx = self._owner.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(model.n_vocab())
        self.n_embd = int(model.n_embd())
        self.max_input = min(max_input, options.batch_tokens)
        self._batch_tokens = options.batch_tokens
        self._batch_inputs = options.batch_inputs
        self._max_waiting = options.max_waiting
        self._batch = llama_cpp.llama_batch_init(options.batch_tokens, 0, 1)
        self._waiting: deque[EmbedJob] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lokal-embeddings", daemon=True)
        self.steps_total = 0
        self.inputs_total = 0

    # -- called from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 60.0) -> bool:
        """Stop the thread, answer waiting inputs, free the context; False (nothing freed)
        if the thread did not end within `timeout`."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False  # still decoding: leave its memory alone rather than free it under it
        for job in self._waiting:
            if not job.cancelled.is_set():
                job.done(None, "the server is shutting down")
        self._waiting.clear()
        llama_cpp.llama_batch_free(self._batch)
        self._owner.close()
        return True

    def submit(self, jobs: Sequence[EmbedJob]) -> None:
        """Queue all inputs of one request at once, so they can share a step."""
        with self._cond:
            live = sum(1 for j in self._waiting if not j.cancelled.is_set())
            if live + len(jobs) > max(self._max_waiting, len(jobs)):
                raise Busy(f"{live} embedding inputs are already waiting for this model",
                           retry_after=1)
            self._waiting.extend(jobs)
            self._cond.notify()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if request.dimensions is not None and request.dimensions != self.n_embd:
            raise InvalidParameter(
                f"this model makes {self.n_embd}-dimensional embeddings and was not trained to "
                f"shorten them (as Matryoshka models are), so 'dimensions' can only be "
                f"{self.n_embd} or left out", param="dimensions")
        token_lists = await asyncio.to_thread(self._tokenize, request.inputs, request.truncate)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Vector]] = [loop.create_future() for _ in token_lists]
        jobs = [EmbedJob(request.request_id, tokens, _resolver(loop, future))
                for tokens, future in zip(token_lists, futures, strict=True)]
        self.submit(jobs)
        try:
            vectors = await asyncio.gather(*futures)
        finally:
            for job in jobs:
                job.cancelled.set()
        return EmbeddingResult(tuple(vectors), sum(len(t) for t in token_lists))

    def _tokenize(self, inputs: Sequence[TextPrompt | TokenPrompt],
                  truncate: bool = False) -> list[list[int]]:
        out = []
        for i, prompt in enumerate(inputs):
            if isinstance(prompt, TokenPrompt):
                bad = [t for t in prompt.token_ids if not 0 <= t < self._n_vocab]
                if bad:
                    raise InvalidParameter(f"input {i}: token id {bad[0]} is outside the "
                                           f"vocabulary (0..{self._n_vocab - 1})", param="input")
                tokens = list(prompt.token_ids)
            else:
                tokens = self._model.tokenize(prompt.text.encode("utf-8"), True, True)
            if not tokens:
                raise InvalidParameter(f"input {i} is empty", param="input")
            if len(tokens) > self.max_input:
                if not truncate:
                    raise InputTooLong(i, len(tokens), self.max_input)
                del tokens[self.max_input:]
            out.append(tokens)
        return out

    # -- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting:
                    self._cond.wait()
                if self._stopping:
                    return
                jobs = self._take()
            if not jobs:
                continue
            try:
                vectors = self._decode(jobs)
            except Exception:
                logger.exception("llama.cpp embedding fault; failing this step's inputs")
                for job in jobs:
                    job.done(None, "llama.cpp embedding fault")
            else:
                for job, vector in zip(jobs, vectors, strict=True):
                    job.done(vector, None)
            finally:
                llama_cpp.llama_memory_clear(self._mem, True)

    def _take(self) -> list[EmbedJob]:
        """The next step's inputs, in arrival order, as many as fit (called with the lock)."""
        jobs: list[EmbedJob] = []
        tokens = 0
        while self._waiting and len(jobs) < self._batch_inputs:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            if tokens + len(job.tokens) > self._batch_tokens:
                break
            self._waiting.popleft()
            jobs.append(job)
            tokens += len(job.tokens)
        return jobs

    def _decode(self, jobs: list[EmbedJob]) -> list[Vector]:
        batch = self._batch
        n = 0
        for seq_id, job in enumerate(jobs):
            for pos, token in enumerate(job.tokens):
                put_row(batch, n, token, pos, seq_id, True)
                n += 1
        batch.n_tokens = n
        logger.debug("embedding step: %d inputs, %d tokens, requests %s", len(jobs), n,
                     sorted({job.request_id for job in jobs}))
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        self.steps_total += 1
        self.inputs_total += len(jobs)
        vectors = []
        for seq_id in range(len(jobs)):
            pooled = llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pooled:
                raise RuntimeError(f"no pooled embedding for sequence {seq_id}")
            vectors.append(_unit(pooled[: self.n_embd]))
        return vectors


def _unit(values: list[float]) -> Vector:
    """L2-normalised, as OpenAI's embeddings are: cosine similarity is then a dot product."""
    norm = math.sqrt(sum(v * v for v in values))
    return tuple(v / norm for v in values) if norm > 0 else tuple(values)


def _resolver(loop: asyncio.AbstractEventLoop,
              future: asyncio.Future[Vector]) -> Callable[[Vector | None, str | None], None]:
    def settle(vector: Vector | None, error: str | None) -> None:
        if future.done():  # the request was cancelled meanwhile
            return
        if error is not None or vector is None:
            future.set_exception(EngineFailure(error or "no embedding"))
        else:
            future.set_result(vector)

    def done(vector: Vector | None, error: str | None) -> None:
        try:
            loop.call_soon_threadsafe(settle, vector, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    return done
