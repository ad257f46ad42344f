"""The engine thread: the only code that touches the llama.cpp context, one job at a time."""

from __future__ import annotations

import codecs
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from backends.base import FinishReason, SamplingParams
from backends.stops import StopMatcher

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """One choice to generate. `emit` is thread-safe and delivers to the request's stream."""

    request_id: str
    index: int
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    seed: int
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


_STOP_THREAD = object()


class EngineThread:
    """Owns a `llama_cpp.Llama`; runs queued jobs in order on its own thread."""

    def __init__(self, llama: Any, max_waiting: int) -> None:
        self._llama = llama
        self._jobs: queue.Queue[Job | object] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._run, name="lokal-llamacpp", daemon=True)
        self.running = 0
        self.cached_tokens_total = 0
        self.cancelled_total = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(_STOP_THREAD)
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Raises queue.Full when the wait queue is full."""
        self._jobs.put_nowait(job)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP_THREAD:
                return
            assert isinstance(job, Job)
            if job.cancelled.is_set():
                continue
            self.running = 1
            try:
                self._generate(job)
            except Exception:
                logger.exception("request %s: llama.cpp engine fault", job.request_id)
                job.emit(Event(job.index, error="llama.cpp engine fault"))
            finally:
                self.running = 0

    def _reusable_prefix(self, prompt: list[int]) -> int:
        """How many leading prompt tokens can keep their KV cells from the previous request.

        Reuse is rounded down to a multiple of n_batch so that the prompt's last batch is the
        same batch a fresh evaluation would run: llama.cpp's kernels give slightly different
        logits for different batch shapes, and without this a repeated request (same seed, or
        temperature 0) could produce different text the second time.
        """
        llama = self._llama
        common = 0
        for a, b in zip(llama._input_ids[: llama.n_tokens], prompt, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        return int(common // llama.n_batch * llama.n_batch)

    def _generate(self, job: Job) -> None:
        llama = self._llama
        vocab = llama._model.vocab
        keep = self._reusable_prefix(job.prompt)
        llama.n_tokens = keep
        self.cached_tokens_total += keep
        llama.set_seed(job.seed)
        sampling = job.sampling
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(sampling.stop)
        generated = 0
        finish: FinishReason = "length"
        tokens = llama.generate(
            job.prompt[keep:],
            reset=False,
            top_k=0,
            top_p=sampling.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=sampling.temperature,
            repeat_penalty=1.0,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    self.cancelled_total += 1
                    logger.info("request %s: cancelled after %d tokens", job.request_id, generated)
                    return
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                generated += 1
                piece = decoder.decode(llama._model.detokenize([token]))
                text = stops.feed(piece)
                if stops.stopped:
                    finish = "stop"
                    if text:
                        job.emit(Event(job.index, text, (token,)))
                    break
                if text:
                    job.emit(Event(job.index, text, (token,)))
                if generated >= job.max_tokens:
                    break
        finally:
            tokens.close()
        if not stops.stopped:
            tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
            if tail:
                job.emit(Event(job.index, tail))
        job.emit(
            Event(
                job.index,
                finish_reason=finish,
                prompt_tokens=len(job.prompt),
                completion_tokens=generated,
                cached_tokens=keep,
            )
        )
