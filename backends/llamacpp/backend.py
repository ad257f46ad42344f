"""LlamaCppBackend: the Backend protocol over lokal's continuous-batching llama.cpp scheduler."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from lokal.backends.base import (
    BackendStats,
    Capabilities,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ModelInfo,
    Usage,
)
from lokal.backends.deadline import DeadlineTimer
from lokal.backends.errors import EngineDown, EngineFailure, InvalidParameter, NotReady
from lokal.backends.llamacpp.cache import copy_min_gain
from lokal.backends.llamacpp.embedder import Embedder
from lokal.backends.llamacpp.guidance import Guidance, LazyCall
from lokal.backends.llamacpp.jobs import Event, Job
from lokal.backends.llamacpp.mailbox import Mailbox
from lokal.backends.llamacpp.scheduler import Scheduler
from lokal.backends.llamacpp.tokenizer import LlamaTokenizer
from lokal.backends.prompt import PromptFrontEnd
from lokal.backends.spec import ModelSpec
from lokal.backends.tool_formats import CallTrigger

logger = logging.getLogger(__name__)


class LlamaCppBackend:
    def __init__(self, spec: ModelSpec, *, reason: str) -> None:
        self._spec = spec
        self._model: Any = None
        self._ctx: Any = None
        self._ctx_owner: Any = None
        self._scheduler: Scheduler | None = None
        self._prompts: PromptFrontEnd | None = None
        self._embedder: Embedder | None = None
        self._guidance: Guidance | None = None
        self._mailbox: Mailbox | None = None
        self._info = ModelInfo(
            id=spec.id,
            context_length=spec.context_length,
            backend="llamacpp",
            backend_reason=reason,
            device="cpu",
            owned_by=spec.owned_by,
            created=int(time.time()),
            capabilities=Capabilities(tools=True, json_schema=True, logprobs=True),
            memory_in_process=True,
            vllm_series="lokal",
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        path = self._spec.gguf_path()
        started = time.perf_counter()
        await asyncio.to_thread(self._load, str(path))
        opts = self._spec.llamacpp
        logger.info("model %s loaded from %s in %.2fs (%d slots x %d tokens)", self._spec.id,
                    path, time.perf_counter() - started, opts.parallel,
                    self._spec.context_length)
        metadata: dict[str, str] = self._model.metadata()
        prompts = self._prompts = PromptFrontEnd(
            LlamaTokenizer(self._model), model=self._spec.id,
            context_length=self._spec.context_length, max_n=opts.parallel,
            configured_template=self._spec.chat_template,
            own_template=metadata.get("tokenizer.chat_template"))
        self._info = dataclasses.replace(self._info, tool_format=prompts.tool_format,
                                         chat_template=prompts.template_source)
        self._scheduler = Scheduler(self._model, self._ctx, n_slots=opts.parallel,
                                    prompt_budget=opts.n_batch, max_waiting=opts.max_waiting,
                                    copy_min_gain=copy_min_gain(self._spec.context_length),
                                    prompt_cache_bytes=opts.prompt_cache_mib * 2**20,
                                    speculation=opts.speculation,
                                    deliver=self._deliver)
        self._scheduler.start()
        self._info = dataclasses.replace(self._info, capabilities=dataclasses.replace(
            self._info.capabilities, fim=prompts.fim,
            embeddings=self._embedder is not None))
        if self._embedder is not None:
            self._embedder.start()

    def _load(self, path: str) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaContext, LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load and graph chatter; errors still come through

        opts = self._spec.llamacpp
        threads = opts.n_threads or os.cpu_count() or 1
        self._model = LlamaModel(path_model=path, params=llama_cpp.llama_model_default_params(),
                                 verbose=False)
        params = llama_cpp.llama_context_default_params()
        # One KV stream per slot, each holding a full context: no request ever gets a silently
        # smaller window because others are running. Separate streams (not one unified cache)
        # also give every sequence the same cell layout whatever ran before, so a repeated
        # request gets bit-identical logits, and attention only scans the sequence's own cells.
        params.n_ctx = opts.parallel * self._spec.context_length
        params.n_batch = params.n_ubatch = opts.n_batch + opts.parallel
        params.n_seq_max = opts.parallel
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        # The wrapper frees the native context when collected: keep it alive with the model.
        self._ctx_owner = LlamaContext(model=self._model, params=params, verbose=False)
        self._ctx = self._ctx_owner.ctx
        self._guidance = Guidance(self._model.vocab, self._model.n_vocab(), opts.grammar)
        if self._spec.embeddings.enabled:
            self._embedder = Embedder(self._model, self._spec.embeddings, n_threads=threads,
                                      max_input=self._spec.context_length)

    def _deliver(self) -> None:
        """The scheduler's hook before it computes or waits: wake the loop for its events."""
        mailbox = self._mailbox
        if mailbox is not None:
            mailbox.wake()

    def _tokenize_text(self, text: str) -> list[int]:
        """Plain text as tokens (no BOS, markers as text): to prime a matcher with it."""
        return list(self._model.tokenize(text.encode("utf-8"), False, False))

    def stats(self) -> BackendStats:
        scheduler = self._scheduler
        if scheduler is None:
            return BackendStats()
        return BackendStats(
            running=scheduler.running, waiting=scheduler.waiting,
            slots_total=scheduler.n_slots, kv_cells_used=scheduler.kv_tokens(),
            kv_cells_busy=scheduler.kv_tokens_busy(),
            kv_cells_total=scheduler.n_slots * self._spec.context_length,
            prefix_cache_hit_tokens=scheduler.cached_tokens_total,
            cancelled=scheduler.cancelled_total,
            ram_cache_bytes=scheduler.ram_cache_bytes,
            ram_cache_hit_tokens=scheduler.ram_hit_tokens_total,
            spec_drafts=scheduler.drafts_total,
            spec_draft_tokens=scheduler.draft_tokens_total,
            spec_accepted_tokens=scheduler.accepted_tokens_total,
            engine_error=scheduler.error,
        )

    async def stop(self) -> None:
        """Answers the requests in flight with an error, joins the engine thread, then frees
        the llama.cpp context and model; never frees them under a thread still running."""
        if self._scheduler is not None:
            if not await _thread_stopped(self._scheduler.stop, self._spec.id, "engine"):
                return
            self._scheduler = None
        if self._embedder is not None:
            if not await _thread_stopped(self._embedder.close, self._spec.id, "embeddings"):
                return
            self._embedder = None
        if self._mailbox is not None:
            self._mailbox.close()
            self._mailbox = None
        self._prompts = None  # its tokenizer reads the model freed below
        self._ctx = None
        if self._ctx_owner is not None:
            self._ctx_owner.close()
            self._ctx_owner = None
        if self._model is not None:
            self._model.close()
            self._model = None

    async def count_tokens(self, request: GenerationRequest) -> int:
        prompts = self._prompts
        if prompts is None:
            raise NotReady("the model is not loaded yet")
        return len(await asyncio.to_thread(prompts.tokens, request))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self._embedder is None:
            if self._model is None:
                raise NotReady("the model is not loaded yet")
            raise InvalidParameter(
                f"model {self._spec.id!r} does not serve embeddings (its model YAML does not "
                "enable them: `embeddings: {enabled: true}`)", param="model")
        return await self._embedder.embed(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        scheduler, prompts = self._scheduler, self._prompts
        if scheduler is None or prompts is None:
            raise NotReady("the model is not loaded yet")
        if request.echo:
            raise InvalidParameter("echo is not supported yet", param="echo")
        events: asyncio.Queue[Event] = asyncio.Queue()
        deadline = DeadlineTimer(request.deadline, lambda _: events.put_nowait(Event(-1)))
        try:
            prepared = await asyncio.to_thread(prompts.prepare, request)
            # The exact ids the engine gets (FIM layout, special tokens), for debugging.
            logger.debug("request %s: prompt token ids %s", request.request_id,
                         prepared.token_ids)
            job = await self._job(request, prepared.token_ids, prepared.max_tokens, events)
            deadline.check()
            scheduler.submit(job)
            try:
                n_prompt, remaining = len(prepared.token_ids), request.n
                while remaining:
                    event = await events.get()
                    deadline.check()
                    if event.error is not None:
                        raise self._failure(scheduler, event.error)
                    if event.finish_reason is None:
                        # A choice's first event (it left the queue) carries the prompt's size.
                        yield Chunk(event.index, event.text, event.token_ids,
                                    logprobs=event.logprobs, queue_seconds=event.queue_seconds,
                                    prompt_tokens=None if event.queue_seconds is None
                                    else n_prompt)
                        continue
                    remaining -= 1
                    yield Chunk(event.index, token_ids=event.token_ids,
                                finish_reason=event.finish_reason,
                                usage=Usage(event.prompt_tokens, event.completion_tokens,
                                            event.cached_tokens),
                                stop_sequence=event.stop_sequence)
            finally:
                job.cancelled.set()
        finally:
            deadline.cancel()

    async def _job(self, request: GenerationRequest, prompt: list[int], max_tokens: int,
                   events: asyncio.Queue[Event]) -> Job:
        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            if self._mailbox is not None:
                self._mailbox.close()
            self._mailbox = Mailbox(loop)
        mailbox = self._mailbox

        def emit(event: Event) -> None:
            mailbox.post(events, event)

        seed = request.sampling.seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        matchers: list[Any] = []
        lazy: list[LazyCall] = []
        constraint = request.constraint
        if constraint is not None:
            # Compiled here, so that a constraint that cannot be enforced is a 400 now rather
            # than a failure inside the engine thread.
            assert self._guidance is not None
            matchers = await asyncio.to_thread(self._guidance.matchers, constraint, request.n)
            if constraint.lazy:
                lazy = [LazyCall(m, CallTrigger(self._info.tool_format, constraint.names),
                                 self._tokenize_text) for m in matchers]
                matchers = []
        return Job(request.request_id, prompt, request.sampling, max_tokens, seed, request.n,
                   emit, matchers=matchers, lazy=lazy,
                   top_logprobs=None if request.logprobs is None else request.logprobs.top_n)

    def _failure(self, scheduler: Scheduler, error: str) -> Exception:
        if scheduler.error is not None:
            return EngineDown(scheduler.error)
        if scheduler.stopping:
            return NotReady(f"model {self._spec.id} was stopped while this request ran (the "
                            "server is shutting down or unloading it)")
        return EngineFailure(error)


async def _thread_stopped(stop: Callable[[], bool], model: str, what: str) -> bool:
    """Runs a worker thread's blocking stop off the event loop; False, logged, when the thread
    did not stop (then the memory it may still touch is kept)."""
    if await asyncio.to_thread(stop):
        return True
    logger.error("model %s: the %s thread did not stop; its memory is kept", model, what)
    return False
