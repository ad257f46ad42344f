"""VllmBackend: the Backend protocol over vLLM's AsyncLLM; abort(request_id) when a stream ends."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from lokal.backends.base import (
    BackendStats,
    Capabilities,
    ChatPrompt,
    Chunk,
    Constraint,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    TextPrompt,
    TokenPrompt,
    Usage,
)
from lokal.backends.chat_template import ChatTemplate, template_source
from lokal.backends.errors import (
    BackendError,
    BackendUnavailable,
    ContextLengthExceeded,
    EngineDown,
    EngineFailure,
    InvalidParameter,
    NotReady,
)
from lokal.backends.fim import FimFormat, fim_prompt, find_fim_format
from lokal.backends.hardware import Hardware
from lokal.backends.json_schema import closed
from lokal.backends.spec import ModelSpec
from lokal.backends.tool_calls import format_for_template
from lokal.backends.vllm.engine import (
    Engine,
    EngineDelta,
    EngineParams,
    Structured,
    load_engine,
    resolve_model,
)

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Mapping[str, Any]], Engine]
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


def engine_args(spec: ModelSpec) -> dict[str, Any]:
    """The YAML's engine arguments plus the model and the context length lokal promises."""
    if spec.vllm is None:
        raise BackendUnavailable(f"model {spec.id!r} names no `vllm` source")
    given = dict(spec.vllm.engine_args)
    for name in ("model", "tokenizer"):
        if name in given:
            raise BackendUnavailable(f"set vllm.{name}, not vllm.engine_args.{name}")
    if given.setdefault("max_model_len", spec.context_length) != spec.context_length:
        raise BackendUnavailable(
            f"vllm.engine_args.max_model_len ({given['max_model_len']}) differs from "
            f"context_length ({spec.context_length}); set context_length only")
    given["model"] = resolve_model(spec.vllm.model, spec.base_dir)
    # llguidance, as on the llama.cpp engine: it enforces what it accepts and refuses the rest
    # at submission. vLLM's "auto" prefers xgrammar, which was seen here to let a string with
    # format and maxLength run to max_tokens.
    given.setdefault("structured_outputs_config", {"backend": "guidance"})
    if spec.vllm.tokenizer is not None:
        given["tokenizer"] = resolve_model(spec.vllm.tokenizer, spec.base_dir,
                                           must_have="tokenizer_config.json")
    return given


def _structured(constraint: Constraint | None) -> Structured | None:
    if constraint is None or constraint.lazy:
        # Calls the model begins in auto mode are held to their schema on the llama.cpp engine
        # only: vLLM's structural tags cannot start at a bare call's name.
        return None
    if constraint.kind == "json_object":
        return Structured("json_object")
    if constraint.kind == "grammar":
        if not constraint.grammar:
            raise InvalidParameter("a grammar constraint needs the grammar text",
                                   param="response_format")
        return Structured("grammar", constraint.grammar)
    if constraint.schema is None:
        raise InvalidParameter(f"a {constraint.kind} constraint needs a JSON schema",
                               param="tools" if constraint.kind == "tool_calls"
                               else "response_format")
    # Closed objects, as on the llama.cpp engine, and whitespace bounded: llguidance reads its
    # options from the schema's x-guidance, but the 1.7 that vLLM pins ignores a whitespace
    # pattern there (8-space indents came through), so the JSON is compact (", " and ": ").
    return Structured("json", {**closed(constraint.schema),
                               "x-guidance": {"whitespace_flexible": False}})


class VllmBackend:
    def __init__(self, spec: ModelSpec, hardware: Hardware, *, reason: str,
                 loader: EngineLoader = load_engine) -> None:
        self._spec = spec
        self._args = engine_args(spec)
        self._loader = loader
        self._engine: Engine | None = None
        self._template: ChatTemplate | None = None
        self._fim: FimFormat | None = None
        self._running = 0
        self._cancelled = 0
        self._cached_tokens = 0
        self._aborting: set[asyncio.Task[None]] = set()
        self._info = ModelInfo(
            id=spec.id, context_length=spec.context_length, backend="vllm",
            backend_reason=reason, device=hardware.device, owned_by=spec.owned_by,
            created=int(time.time()), capabilities=Capabilities(json_schema=True))

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        started = time.perf_counter()
        # AsyncLLM starts its engine-core process and waits for it; keep the loop free meanwhile
        # so /health/live answers while the model loads.
        engine = await asyncio.to_thread(self._loader, self._args)
        template = self._spec.chat_template or engine.chat_template
        if template is None:
            logger.warning("model %s has no chat template; using lokal's ChatML fallback",
                           self._spec.id)
        self._info = dataclasses.replace(
            self._info, tool_format=format_for_template(template),
            chat_template=template_source(self._spec.chat_template, engine.chat_template))
        self._template = ChatTemplate(template, bos_token=engine.bos_token,
                                      eos_token=engine.eos_token)
        self._fim = find_fim_format(engine.tokenizer.get_vocab())
        self._info = dataclasses.replace(self._info, capabilities=dataclasses.replace(
            self._info.capabilities, fim=self._fim is not None))
        self._engine = engine
        logger.info("model %s loaded by vLLM from %s in %.2fs", self._spec.id,
                    self._args["model"], time.perf_counter() - started)

    async def stop(self) -> None:
        await asyncio.gather(*self._aborting, return_exceptions=True)
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)

    def stats(self) -> BackendStats:
        slots = self._engine.max_num_seqs if self._engine is not None else 1
        dead = self._engine is not None and self._engine.errored
        return BackendStats(running=self._running, slots_total=slots,
                            prefix_cache_hit_tokens=self._cached_tokens,
                            cancelled=self._cancelled,
                            engine_error="the vLLM engine core died" if dead else None)

    async def count_tokens(self, request: GenerationRequest) -> int:
        engine = self._engine
        if engine is None:
            raise NotReady("the model is not loaded yet")
        return len(await asyncio.to_thread(self._tokenize, engine, request))

    def _tokenize(self, engine: Engine, request: GenerationRequest) -> list[int]:
        if request.suffix is not None:
            return self._fim_tokens(engine, request)
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt):
            bad = [t for t in prompt.token_ids if not 0 <= t < engine.vocab_size]
            if bad:
                raise InvalidParameter(f"token id {bad[0]} is outside the vocabulary "
                                       f"(0..{engine.vocab_size - 1})", param="prompt")
            return list(prompt.token_ids)
        if isinstance(prompt, ChatPrompt):
            assert self._template is not None
            text = self._template.render(prompt.messages, tools=prompt.tools,
                                         add_generation_prompt=prompt.add_generation_prompt,
                                         continue_final=prompt.continue_final)
            # The template may already open with BOS; never add a second one.
            bos = self._template.bos_token
            return engine.tokenizer.encode(
                text, add_special_tokens=not (bos and text.startswith(bos)))
        assert isinstance(prompt, TextPrompt)
        return engine.tokenizer.encode(prompt.text, add_special_tokens=True)

    def _fim_tokens(self, engine: Engine, request: GenerationRequest) -> list[int]:
        """Prefix-suffix-middle from the vocabulary's own FIM tokens, as the llama.cpp backend
        builds it: [BOS] <fim_prefix> prompt <fim_suffix> suffix <fim_middle>."""
        assert request.suffix is not None
        fmt = self._fim
        if fmt is None:
            fim_prompt("", "", None, self._spec.id)  # raises the 400 naming `suffix`
        assert fmt is not None
        if isinstance(request.prompt, ChatPrompt):
            raise InvalidParameter("suffix needs a text or token prompt", param="suffix")
        tokenizer = engine.tokenizer
        before = self._tokenize(engine, dataclasses.replace(request, suffix=None)) \
            if isinstance(request.prompt, TokenPrompt) else \
            tokenizer.encode(request.prompt.text, add_special_tokens=False)
        vocab = tokenizer.get_vocab()
        return [*tokenizer.encode("", add_special_tokens=True), vocab[fmt.prefix], *before,
                vocab[fmt.suffix], *tokenizer.encode(request.suffix, add_special_tokens=False),
                vocab[fmt.middle]]

    def _params(self, engine: Engine, request: GenerationRequest, prompt_len: int) -> EngineParams:
        if request.echo:
            raise InvalidParameter("echo is not supported by lokal's vLLM backend",
                                   param="echo")
        sampling = request.sampling
        bad = [t for t in sampling.logit_bias if not 0 <= t < engine.vocab_size]
        if bad:
            raise InvalidParameter(f"logit_bias token id {bad[0]} is outside the vocabulary",
                                   param="logit_bias")
        n_ctx = self._spec.context_length
        max_tokens = sampling.max_tokens
        if max_tokens is None:
            if prompt_len >= n_ctx:
                raise ContextLengthExceeded(prompt_len, None, n_ctx)
            max_tokens = n_ctx - prompt_len
        elif prompt_len + max_tokens > n_ctx:
            raise ContextLengthExceeded(prompt_len, max_tokens, n_ctx)
        return EngineParams(
            max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=sampling.stop, presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty, top_k=sampling.top_k,
            min_p=sampling.min_p, repetition_penalty=sampling.repetition_penalty,
            logit_bias=dict(sampling.logit_bias), structured=_structured(request.constraint),
            logprobs=None if request.logprobs is None else request.logprobs.top_n)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise InvalidParameter(f"model {self._spec.id!r} does not serve embeddings on the vLLM "
                               "backend (lokal's vLLM adapter has no embedding support yet)",
                               param="model")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        engine = self._engine
        if engine is None:
            raise NotReady("the model is not loaded yet")
        if engine.errored:
            raise EngineDown("the vLLM engine core died")
        if request.n < 1:
            raise InvalidParameter("n must be at least 1", param="n")
        prompt = await asyncio.to_thread(self._tokenize, engine, request)
        if not prompt:
            raise InvalidParameter("the prompt is empty", param="prompt")
        params = self._params(engine, request, len(prompt))
        seed = request.sampling.seed
        # One engine request per choice, seeded seed+i as in the llama.cpp backend, so choice i
        # of n equals the single request with seed+i. Unseeded requests stay unseeded: vLLM then
        # samples from its own generator, with no per-request one to keep.
        ids = [request.request_id if request.n == 1 else f"{request.request_id}-{i}"
               for i in range(request.n)]
        events: asyncio.Queue[tuple[int, EngineDelta | BaseException]] = asyncio.Queue()

        async def pump(index: int) -> None:
            choice = params if seed is None else dataclasses.replace(
                params, seed=(seed + index) % 2**63)
            try:
                async for delta in engine.generate(prompt, choice, ids[index]):
                    events.put_nowait((index, delta))
            except Exception as exc:
                events.put_nowait((index, exc))

        tasks = [asyncio.create_task(pump(i)) for i in range(request.n)]
        generated = [0] * request.n
        remaining = request.n
        self._running += request.n
        try:
            while remaining:
                index, event = await events.get()
                if isinstance(event, BackendError):
                    raise event
                if isinstance(event, BaseException):
                    raise EngineFailure(f"vLLM failed: {event!r}") from event
                generated[index] += len(event.token_ids)
                if event.text or event.token_ids:
                    yield Chunk(index, event.text, event.token_ids, logprobs=event.logprobs)
                if event.finish_reason is None:
                    continue
                remaining -= 1
                self._cached_tokens += event.cached_tokens
                yield Chunk(index, finish_reason=self._finish(event.finish_reason, request),
                            usage=Usage(len(prompt), generated[index], event.cached_tokens),
                            stop_sequence=event.stop_sequence)
        finally:
            self._running -= request.n
            if remaining:
                self._cancel(engine, ids, tasks, generated)

    def _finish(self, reason: str, request: GenerationRequest) -> FinishReason:
        finish = _FINISH.get(reason)
        if finish is None:
            raise EngineFailure(f"vLLM ended a request with finish_reason={reason!r}")
        constraint = request.constraint
        if finish == "stop" and constraint is not None and constraint.kind == "tool_calls":
            return "tool_calls"
        return finish

    def _cancel(self, engine: Engine, ids: list[str], tasks: list[asyncio.Task[None]],
                generated: list[int]) -> None:
        """The consumer left early (client gone, error): free the engine's work and KV now.

        Synchronous on purpose: Starlette cancels a gone client's stream through an anyio cancel
        scope that raises again at every await, so the abort runs as a task of its own.
        """
        self._cancelled += 1
        for task in tasks:
            task.cancel()
        abort = asyncio.get_running_loop().create_task(self._abort(engine, ids))
        self._aborting.add(abort)
        abort.add_done_callback(self._aborting.discard)
        logger.info("request %s: cancelled after %d tokens", ids[0], sum(generated))

    async def _abort(self, engine: Engine, ids: list[str]) -> None:
        try:
            await engine.abort(ids)
        except Exception:
            logger.exception("request %s: vLLM abort failed", ids[0])
