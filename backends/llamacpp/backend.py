"""LlamaCppBackend: the Backend protocol over lokal's continuous-batching llama.cpp scheduler."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import AsyncGenerator
from typing import Any

from lokal.backends.base import (
    BackendStats,
    Capabilities,
    ChatPrompt,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ModelInfo,
    TextPrompt,
    TokenPrompt,
    Usage,
)
from lokal.backends.chat_template import ChatTemplate, template_source
from lokal.backends.errors import (
    ContextLengthExceeded,
    EngineDown,
    EngineFailure,
    InvalidParameter,
    NotReady,
)
from lokal.backends.llamacpp.cache import copy_min_gain
from lokal.backends.llamacpp.embedder import Embedder
from lokal.backends.llamacpp.guidance import Guidance, LazyCall
from lokal.backends.llamacpp.jobs import Event, Job
from lokal.backends.llamacpp.mailbox import Mailbox
from lokal.backends.llamacpp.scheduler import Scheduler
from lokal.backends.spec import ModelSpec
from lokal.backends.tool_calls import CallTrigger, format_for_template

logger = logging.getLogger(__name__)


class LlamaCppBackend:
    def __init__(self, spec: ModelSpec, *, reason: str) -> None:
        self._spec = spec
        self._model: Any = None
        self._ctx: Any = None
        self._ctx_owner: Any = None
        self._scheduler: Scheduler | None = None
        self._template: ChatTemplate | None = None
        self._n_vocab = 0
        self._fim: tuple[int, int, int] | None = None
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
        template = self._spec.chat_template or metadata.get("tokenizer.chat_template")
        if template is None:
            logger.warning("model %s has no chat template; using lokal's ChatML fallback",
                           self._spec.id)
        self._info = dataclasses.replace(
            self._info, tool_format=format_for_template(template),
            chat_template=template_source(self._spec.chat_template,
                                          metadata.get("tokenizer.chat_template")))
        self._template = ChatTemplate(
            template,
            bos_token=self._token_text(self._model.token_bos()),
            eos_token=self._token_text(self._model.token_eos()),
        )
        self._scheduler = Scheduler(self._model, self._ctx, n_slots=opts.parallel,
                                    prompt_budget=opts.n_batch, max_waiting=opts.max_waiting,
                                    copy_min_gain=copy_min_gain(self._spec.context_length),
                                    prompt_cache_bytes=opts.prompt_cache_mib * 2**20,
                                    speculation=opts.speculation,
                                    deliver=self._deliver)
        self._scheduler.start()
        self._info = dataclasses.replace(self._info, capabilities=dataclasses.replace(
            self._info.capabilities, fim=self._fim is not None,
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
        self._n_vocab = self._model.n_vocab()
        vocab = self._model.vocab
        self._guidance = Guidance(vocab, self._n_vocab, opts.grammar)
        fim = (llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
               llama_cpp.llama_vocab_fim_mid(vocab))
        self._fim = fim if min(fim) >= 0 else None
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

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._model.detokenize([token], special=True)).decode("utf-8", "replace")

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
            if not await asyncio.to_thread(self._scheduler.stop):
                logger.error("model %s: the engine thread did not stop; its memory is kept",
                             self._spec.id)
                return
            self._scheduler = None
        if self._embedder is not None:
            if not await asyncio.to_thread(self._embedder.close):
                logger.error("model %s: the embeddings thread did not stop; its memory is kept",
                             self._spec.id)
                return
            self._embedder = None
        if self._mailbox is not None:
            self._mailbox.close()
            self._mailbox = None
        self._ctx = None
        if self._ctx_owner is not None:
            self._ctx_owner.close()
            self._ctx_owner = None
        if self._model is not None:
            self._model.close()
            self._model = None

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        if request.suffix is not None:
            return self._fim_tokens(request)
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt):
            bad = [t for t in prompt.token_ids if not 0 <= t < self._n_vocab]
            if bad:
                raise InvalidParameter(
                    f"token id {bad[0]} is outside the vocabulary (0..{self._n_vocab - 1})",
                    param="prompt")
            return list(prompt.token_ids)
        if isinstance(prompt, ChatPrompt):
            assert self._template is not None
            text = self._template.render(prompt.messages, tools=prompt.tools,
                                         add_generation_prompt=prompt.add_generation_prompt,
                                         continue_final=prompt.continue_final)
            add_bos = not (self._template.bos_token and text.startswith(self._template.bos_token))
        else:
            assert isinstance(prompt, TextPrompt)
            text, add_bos = prompt.text, True
        tokens: list[int] = self._model.tokenize(text.encode("utf-8"), add_bos, True)
        return tokens

    def _fim_tokens(self, request: GenerationRequest) -> list[int]:
        """Prefix-suffix-middle from the vocabulary's own FIM tokens:
        [BOS] <fim_pre> prompt <fim_suf> suffix <fim_mid>; the model then writes the middle."""
        import llama_cpp

        assert self._fim is not None and request.suffix is not None
        pre, suf, mid = self._fim
        prompt = request.prompt
        if isinstance(prompt, ChatPrompt):
            raise InvalidParameter("'suffix' needs a text or token prompt", param="suffix")
        if isinstance(prompt, TokenPrompt):
            before = self._tokenize(dataclasses.replace(request, suffix=None))
        else:
            before = self._model.tokenize(prompt.text.encode("utf-8"), False, True)
        after: list[int] = self._model.tokenize(request.suffix.encode("utf-8"), False, True)
        bos = self._model.token_bos()
        start = [bos] if llama_cpp.llama_vocab_get_add_bos(self._model.vocab) and bos >= 0 else []
        return [*start, pre, *before, suf, *after, mid]

    def _check_supported(self, request: GenerationRequest) -> None:
        if request.suffix is not None and self._fim is None:
            raise InvalidParameter(
                f"model {self._spec.id!r} has no fill-in-the-middle tokens (fim_pre, fim_suf, "
                "fim_mid) in its vocabulary, so 'suffix' cannot be honoured", param="suffix")
        if request.echo:
            raise InvalidParameter("echo is not supported yet", param="echo")
        slots = self._spec.llamacpp.parallel
        if request.n > slots:
            raise InvalidParameter(
                f"n={request.n} is more than this model's {slots} parallel slots", param="n")
        bad = [t for t in request.sampling.logit_bias if not 0 <= t < self._n_vocab]
        if bad:
            raise InvalidParameter(f"logit_bias token {bad[0]} is outside the vocabulary",
                                   param="logit_bias")

    async def count_tokens(self, request: GenerationRequest) -> int:
        if self._model is None:
            raise NotReady("the model is not loaded yet")
        return len(await asyncio.to_thread(self._tokenize, request))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self._embedder is None:
            if self._model is None:
                raise NotReady("the model is not loaded yet")
            raise InvalidParameter(
                f"model {self._spec.id!r} does not serve embeddings (its model YAML does not "
                "enable them: `embeddings: {enabled: true}`)", param="model")
        return await self._embedder.embed(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        scheduler = self._scheduler
        if scheduler is None:
            raise NotReady("the model is not loaded yet")
        self._check_supported(request)
        prompt = await asyncio.to_thread(self._tokenize, request)
        # The exact ids the engine gets (FIM layout, special tokens), for debugging.
        logger.debug("request %s: prompt token ids %s", request.request_id, prompt)
        if not prompt:
            raise InvalidParameter("the prompt is empty", param="prompt")
        n_ctx = self._spec.context_length
        max_tokens = request.sampling.max_tokens
        if max_tokens is None:
            if len(prompt) >= n_ctx:
                raise ContextLengthExceeded(len(prompt), None, n_ctx)
            max_tokens = n_ctx - len(prompt)
        elif len(prompt) + max_tokens > n_ctx:
            raise ContextLengthExceeded(len(prompt), max_tokens, n_ctx)

        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            if self._mailbox is not None:
                self._mailbox.close()
            self._mailbox = Mailbox(loop)
        mailbox = self._mailbox
        events: asyncio.Queue[Event] = asyncio.Queue()

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
        job = Job(request.request_id, prompt, request.sampling, max_tokens, seed, request.n,
                  emit, matchers=matchers, lazy=lazy,
                  top_logprobs=None if request.logprobs is None else request.logprobs.top_n)
        scheduler.submit(job)
        try:
            remaining = request.n
            while remaining:
                event = await events.get()
                if event.error is not None:
                    if scheduler.error is not None:
                        raise EngineDown(scheduler.error)
                    if scheduler.stopping:
                        raise NotReady(f"model {self._spec.id} was stopped while this request "
                                       "ran (the server is shutting down or unloading it)")
                    raise EngineFailure(event.error)
                if event.finish_reason is None:
                    yield Chunk(event.index, event.text, event.token_ids,
                                logprobs=event.logprobs, queue_seconds=event.queue_seconds)
                    continue
                remaining -= 1
                yield Chunk(event.index, token_ids=event.token_ids,
                            finish_reason=event.finish_reason,
                            usage=Usage(event.prompt_tokens, event.completion_tokens,
                                        event.cached_tokens),
                            stop_sequence=event.stop_sequence)
        finally:
            job.cancelled.set()
