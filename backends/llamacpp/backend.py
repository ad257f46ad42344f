"""LlamaCppBackend: the Backend protocol over lokal's llama.cpp engine thread."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import time
from collections.abc import AsyncGenerator
from typing import Any

from backends.base import (
    BackendStats,
    Capabilities,
    ChatPrompt,
    Chunk,
    GenerationRequest,
    ModelInfo,
    TextPrompt,
    TokenPrompt,
    Usage,
)
from backends.chat_template import ChatTemplate
from backends.errors import (
    Busy,
    ContextLengthExceeded,
    EngineFailure,
    InvalidParameter,
    NotReady,
)
from backends.llamacpp.engine import EngineThread, Event, Job
from backends.spec import ModelSpec

logger = logging.getLogger(__name__)

MAX_WAITING = 64


class LlamaCppBackend:
    def __init__(self, spec: ModelSpec, *, reason: str) -> None:
        self._spec = spec
        self._reason = reason
        self._llama: Any = None
        self._engine: EngineThread | None = None
        self._template: ChatTemplate | None = None
        self._info = ModelInfo(
            id=spec.id,
            context_length=spec.context_length,
            backend="llamacpp",
            backend_reason=reason,
            device="cpu",
            owned_by=spec.owned_by,
            created=int(time.time()),
            capabilities=Capabilities(),
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        path = self._spec.gguf_path()
        started = time.perf_counter()
        self._llama = await asyncio.to_thread(self._load, str(path))
        logger.info(
            "model %s loaded from %s in %.2fs", self._spec.id, path, time.perf_counter() - started
        )
        metadata: dict[str, str] = self._llama.metadata
        template = self._spec.chat_template or metadata.get("tokenizer.chat_template")
        if template is None:
            logger.warning("model %s has no chat template; using lokal's ChatML fallback",
                           self._spec.id)
        self._template = ChatTemplate(
            template,
            bos_token=self._token_text(self._llama.token_bos()),
            eos_token=self._token_text(self._llama.token_eos()),
        )
        self._engine = EngineThread(self._llama, max_waiting=MAX_WAITING)
        self._engine.start()

    def _load(self, path: str) -> Any:
        import llama_cpp

        opts = self._spec.llamacpp
        return llama_cpp.Llama(
            model_path=path,
            n_ctx=self._spec.context_length,
            n_batch=opts.n_batch,
            n_threads=opts.n_threads or os.cpu_count() or 1,
            verbose=False,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llama._model.detokenize([token], special=True)).decode(
            "utf-8", errors="replace"
        )

    def stats(self) -> BackendStats:
        engine = self._engine
        if engine is None:
            return BackendStats()
        return BackendStats(running=engine.running, waiting=engine.waiting,
                            prefix_cache_hit_tokens=engine.cached_tokens_total,
                            cancelled=engine.cancelled_total)

    async def stop(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.stop)
            self._engine = None
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt):
            vocab = self._llama.n_vocab()
            bad = [t for t in prompt.token_ids if not 0 <= t < vocab]
            if bad:
                raise InvalidParameter(
                    f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
            return list(prompt.token_ids)
        if isinstance(prompt, ChatPrompt):
            assert self._template is not None
            text = self._template.render(
                prompt.messages,
                tools=prompt.tools,
                add_generation_prompt=prompt.add_generation_prompt,
            )
            add_bos = not (self._template.bos_token and text.startswith(self._template.bos_token))
        else:
            assert isinstance(prompt, TextPrompt)
            text, add_bos = prompt.text, True
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos,
                                                 special=True)
        return tokens

    def _check_supported(self, request: GenerationRequest) -> None:
        if request.logprobs is not None:
            raise InvalidParameter("logprobs are not supported by lokal's llama.cpp backend yet",
                                   param="logprobs")
        if request.constraint is not None:
            raise InvalidParameter(
                f"{request.constraint.kind} constraints are not supported by lokal's llama.cpp "
                "backend yet", param="response_format")
        if request.suffix is not None:
            raise InvalidParameter("suffix (fill-in-the-middle) is not supported yet",
                                   param="suffix")
        if request.sampling.logit_bias:
            raise InvalidParameter("logit_bias is not supported yet", param="logit_bias")
        if request.echo:
            raise InvalidParameter("echo is not supported yet", param="echo")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        engine = self._engine
        if engine is None:
            raise NotReady("the model is not loaded yet")
        self._check_supported(request)
        prompt = await asyncio.to_thread(self._tokenize, request)
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
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        base_seed = request.sampling.seed
        if base_seed is None:
            base_seed = random.SystemRandom().randrange(2**31)
        jobs = [
            Job(request.request_id, i, prompt, request.sampling, max_tokens,
                (base_seed + i) % 2**32, emit)
            for i in range(request.n)
        ]
        try:
            for job in jobs:
                engine.submit(job)
        except queue.Full:
            for job in jobs:
                job.cancelled.set()
            raise Busy(f"{MAX_WAITING} requests are already waiting for this model", 1) from None
        try:
            remaining = request.n
            while remaining:
                event = await events.get()
                if event.error is not None:
                    raise EngineFailure(event.error)
                if event.finish_reason is None:
                    yield Chunk(event.index, event.text, event.token_ids)
                    continue
                remaining -= 1
                yield Chunk(
                    event.index,
                    finish_reason=event.finish_reason,
                    usage=Usage(event.prompt_tokens, event.completion_tokens,
                                event.cached_tokens),
                )
        finally:
            for job in jobs:
                job.cancelled.set()
