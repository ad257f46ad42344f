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
    Chunk,
    Constraint,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    Usage,
)
from lokal.backends.deadline import DeadlineTimer
from lokal.backends.errors import (
    BackendError,
    BackendUnavailable,
    EngineDown,
    EngineFailure,
    InvalidParameter,
    NotReady,
)
from lokal.backends.hardware import Hardware
from lokal.backends.json_schema import closed
from lokal.backends.prompt import PromptFrontEnd
from lokal.backends.spec import ModelSpec
from lokal.backends.vllm.engine import (
    Engine,
    EngineDelta,
    EngineParams,
    Structured,
    load_engine,
    resolve_model,
)
from lokal.backends.vllm.tokenizer import HfTokenizer

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
        self._prompts: PromptFrontEnd | None = None
        self._running = 0
        self._cancelled = 0
        self._cached_tokens = 0
        self._aborting: set[asyncio.Task[None]] = set()
        self._info = ModelInfo(
            id=spec.id, context_length=spec.context_length, backend="vllm",
            backend_reason=reason, device=hardware.device, owned_by=spec.owned_by,
            created=int(time.time()), capabilities=Capabilities(json_schema=True),
            vllm_series="engine")

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        started = time.perf_counter()
        # AsyncLLM starts its engine-core process and waits for it; keep the loop free meanwhile
        # so /health/live answers while the model loads.
        engine = await asyncio.to_thread(self._loader, self._args)
        prompts = self._prompts = PromptFrontEnd(
            HfTokenizer(engine), model=self._spec.id, context_length=self._spec.context_length,
            configured_template=self._spec.chat_template, own_template=engine.chat_template)
        self._info = dataclasses.replace(
            self._info, tool_format=prompts.tool_format, chat_template=prompts.template_source,
            capabilities=dataclasses.replace(self._info.capabilities, fim=prompts.fim))
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
        prompts = self._prompts
        if self._engine is None or prompts is None:
            raise NotReady("the model is not loaded yet")
        return len(await asyncio.to_thread(prompts.tokens, request))

    def _params(self, request: GenerationRequest, max_tokens: int) -> EngineParams:
        sampling = request.sampling
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
        engine, prompts = self._engine, self._prompts
        if engine is None or prompts is None:
            raise NotReady("the model is not loaded yet")
        if engine.errored:
            raise EngineDown("the vLLM engine core died")
        if request.echo:
            raise InvalidParameter("echo is not supported by lokal's vLLM backend",
                                   param="echo")
        events: asyncio.Queue[tuple[int, EngineDelta | BaseException]] = asyncio.Queue()
        deadline = DeadlineTimer(request.deadline, lambda error: events.put_nowait((-1, error)))
        try:
            prepared = await asyncio.to_thread(prompts.prepare, request)
            params = self._params(request, prepared.max_tokens)
            deadline.check()
        except BaseException:
            deadline.cancel()
            raise
        prompt = prepared.token_ids
        seed = request.sampling.seed
        # One engine request per choice, seeded seed+i as in the llama.cpp backend, so choice i
        # of n equals the single request with seed+i. Unseeded requests stay unseeded: vLLM then
        # samples from its own generator, with no per-request one to keep.
        ids = [request.request_id if request.n == 1 else f"{request.request_id}-{i}"
               for i in range(request.n)]

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
        started = [False] * request.n
        remaining = request.n
        self._running += request.n
        try:
            while remaining:
                index, event = await events.get()
                deadline.check()
                if isinstance(event, BackendError):
                    raise event
                if isinstance(event, BaseException):
                    raise EngineFailure(f"vLLM failed: {event!r}") from event
                # A choice's first chunk carries the prompt's size.
                first = None if started[index] else len(prompt)
                generated[index] += len(event.token_ids)
                if event.text or event.token_ids:
                    yield Chunk(index, event.text, event.token_ids, logprobs=event.logprobs,
                                prompt_tokens=first)
                    started[index], first = True, None
                if event.finish_reason is None:
                    continue
                remaining -= 1
                self._cached_tokens += event.cached_tokens
                yield Chunk(index, finish_reason=self._finish(event.finish_reason, request),
                            usage=Usage(len(prompt), generated[index], event.cached_tokens),
                            stop_sequence=event.stop_sequence, prompt_tokens=first)
        finally:
            deadline.cancel()
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
