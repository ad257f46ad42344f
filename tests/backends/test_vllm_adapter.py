"""VllmBackend's contract against a fake engine: no vLLM needed, so it runs in the fast suite."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Chunk,
    Constraint,
    Deadline,
    GenerationRequest,
    LogprobsRequest,
    SamplingParams,
    TextPrompt,
    TokenLogprob,
    TokenPrompt,
    TopLogprob,
)
from lokal.backends.errors import (
    BackendUnavailable,
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineFailure,
    InvalidParameter,
    NotReady,
)
from lokal.backends.hardware import Hardware
from lokal.backends.registry import create_backend
from lokal.backends.spec import ModelSpec
from lokal.backends.vllm.backend import VllmBackend, engine_args
from lokal.backends.vllm.engine import EngineDelta, EngineParams, Structured

CPU = Hardware((), "NVML reports no GPU")
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class FakeTokenizer:
    """One token per character: lengths are easy to reason about."""

    def __init__(self, vocab: Mapping[str, int]) -> None:
        self.vocab = dict(vocab)
        self.calls: list[tuple[str, bool]] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls.append((text, add_special_tokens))
        return ([1] if add_special_tokens else []) + [ord(c) % 1000 for c in text]

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


@dataclass
class Call:
    prompt: list[int]
    params: EngineParams
    request_id: str


@dataclass
class FakeEngine:
    """Replays `script` (text pieces) for every request, then finishes with `finish`."""

    script: tuple[str, ...] = ("Hel", "lo", "!")
    logprob: TokenLogprob | None = None
    finish: str = "stop"
    fail_with: BaseException | None = None
    endless: bool = False
    vocab: Mapping[str, int] = field(default_factory=dict)
    vocab_size: int = 1000
    max_num_seqs: int = 16
    chat_template: str | None = TEMPLATE
    bos_token: str = "<|im_start|>"
    eos_token: str = "<|im_end|>"
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    shut: bool = False
    errored: bool = False

    def __post_init__(self) -> None:
        self.tokenizer = FakeTokenizer(self.vocab)

    async def generate(self, prompt: list[int], params: EngineParams,
                       request_id: str) -> AsyncIterator[EngineDelta]:
        self.calls.append(Call(prompt, params, request_id))
        if self.fail_with is not None:
            raise self.fail_with
        step = 0
        try:
            while self.endless:
                step += 1
                yield EngineDelta("x", (step,))
                await asyncio.sleep(0.001)  # a decode step: the consumer waits on the queue
        finally:
            self.closed.append(request_id)
        for i, piece in enumerate(self.script):
            last = i == len(self.script) - 1
            logprobs = (self.logprob,) if self.logprob and params.logprobs is not None else ()
            yield EngineDelta(piece, (100 + i,), self.finish if last else None,
                              cached_tokens=7 if last else 0, logprobs=logprobs)
            await asyncio.sleep(0)

    async def abort(self, request_ids: list[str]) -> None:
        self.aborted.extend(request_ids)

    def shutdown(self) -> None:
        self.shut = True


def make_spec(tmp_path: Path, **extra: Any) -> ModelSpec:
    model = tmp_path / "hf"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    vllm = {"model": "./hf", "engine_args": {"enforce_eager": True}, **extra}
    return ModelSpec.model_validate({"id": "m", "context_length": 64, "vllm": vllm,
                                     "base_dir": tmp_path})


async def started(tmp_path: Path, engine: FakeEngine) -> VllmBackend:
    seen: list[Mapping[str, Any]] = []

    def loader(args: Mapping[str, Any]) -> FakeEngine:
        seen.append(args)
        return engine

    backend = VllmBackend(make_spec(tmp_path), CPU, reason="test", loader=loader)
    await backend.start()
    assert seen == [{"enforce_eager": True, "max_model_len": 64,
                     "model": str((tmp_path / "hf").resolve()),
                     "structured_outputs_config": {"backend": "guidance"}}]
    return backend


async def collect(backend: VllmBackend, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in backend.generate(request)]


def req(prompt: Any = None, **kw: Any) -> GenerationRequest:
    return GenerationRequest("r1", prompt if prompt is not None else TextPrompt("hi"), **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_stream_maps_deltas_finish_and_engine_counted_usage(tmp_path: Path) -> None:
    async def go() -> tuple[list[Chunk], FakeEngine]:
        engine = FakeEngine()
        backend = await started(tmp_path, engine)
        chunks = await collect(backend, req(sampling=SamplingParams(max_tokens=10, seed=5,
                                                                    stop=("###",))))
        await backend.stop()
        assert engine.shut
        return chunks, engine

    chunks, engine = run(go())
    assert "".join(c.text for c in chunks) == "Hello!"
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.text == ""
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens,
            last.usage.cached_tokens) == (3, 3, 7)
    (call,) = engine.calls
    assert call.request_id == "r1"
    assert call.params.stop == ("###",) and call.params.seed == 5
    assert call.params.max_tokens == 10
    assert engine.aborted == []


def test_chat_renders_template_without_a_second_bos_and_defaults_to_remaining_context(
        tmp_path: Path) -> None:
    engine = FakeEngine()

    async def go() -> None:
        backend = await started(tmp_path, engine)
        await collect(backend, req(ChatPrompt((ChatMessage("user", "hi"),))))

    run(go())
    text, add_special = engine.tokenizer.calls[0]
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert add_special is False
    call = engine.calls[0]
    assert call.params.max_tokens == 64 - len(call.prompt)


def test_context_overflow_is_raised_before_any_engine_work(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def go() -> None:
        backend = await started(tmp_path, engine)
        with pytest.raises(ContextLengthExceeded) as info:
            await collect(backend, req(sampling=SamplingParams(max_tokens=62)))
        assert info.value.prompt_tokens == 3 and info.value.context_length == 64
        with pytest.raises(ContextLengthExceeded):
            await collect(backend, req(TextPrompt("x" * 70)))

    run(go())
    assert engine.calls == []


def test_n_choices_are_separate_requests_seeded_seed_plus_i(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def go() -> list[Chunk]:
        backend = await started(tmp_path, engine)
        return await collect(backend, req(n=3, sampling=SamplingParams(max_tokens=5, seed=40)))

    chunks = run(go())
    assert sorted(c.params.seed or 0 for c in engine.calls) == [40, 41, 42]
    assert sorted(c.request_id for c in engine.calls) == ["r1-0", "r1-1", "r1-2"]
    finals = [c for c in chunks if c.finish_reason is not None]
    assert sorted(c.index for c in finals) == [0, 1, 2]
    assert all(c.usage is not None and c.usage.completion_tokens == 3 for c in finals)
    for i in range(3):
        assert "".join(c.text for c in chunks if c.index == i) == "Hello!"


def test_closing_the_stream_aborts_every_engine_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(endless=True)

    async def go() -> VllmBackend:
        backend = await started(tmp_path, engine)
        stream = backend.generate(req(n=2, sampling=SamplingParams(max_tokens=50)))
        got = [await stream.__anext__() for _ in range(4)]
        assert all(c.text == "x" for c in got)
        assert backend.stats().running == 2 and backend.stats().slots_total == 16
        await stream.aclose()
        await asyncio.sleep(0.01)  # the abort runs as its own task
        assert sorted(engine.closed) == ["r1-0", "r1-1"]  # no engine stream left running
        return backend

    with caplog.at_level(logging.INFO, logger="lokal.backends.vllm.backend"):
        backend = run(go())
    assert sorted(engine.aborted) == ["r1-0", "r1-1"]
    assert backend.stats().running == 0 and backend.stats().cancelled == 1
    assert "cancelled after" in caplog.text


def test_unsupported_requests_are_invalid_parameter_before_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine()
    cases: list[tuple[GenerationRequest, str]] = [
        (req(echo=True), "echo"),
        (req(suffix="tail"), "suffix"),  # the fake vocabulary has no FIM tokens
        (req(TokenPrompt((5, 1000))), "prompt"),
        (req(sampling=SamplingParams(logit_bias={5000: 1.0})), "logit_bias"),
        (req(constraint=Constraint("tool_calls")), "tools"),
        (req(constraint=Constraint("grammar")), "response_format"),
    ]

    async def go() -> None:
        backend = await started(tmp_path, engine)
        for request, param in cases:
            with pytest.raises(InvalidParameter) as info:
                await collect(backend, request)
            assert info.value.param == param, request

    run(go())
    assert engine.calls == []


def test_constraints_become_structured_outputs(tmp_path: Path) -> None:
    engine = FakeEngine()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}

    async def go() -> list[Chunk]:
        backend = await started(tmp_path, engine)
        await collect(backend, req(constraint=Constraint("json_schema", schema=schema)))
        await collect(backend, req(constraint=Constraint("json_object")))
        await collect(backend, req(constraint=Constraint("grammar", grammar="root ::= \"a\"")))
        return await collect(backend, req(constraint=Constraint("tool_calls", schema=schema)))

    tool_chunks = run(go())
    # Objects that declare their properties are closed, whitespace bounded, as on llama.cpp.
    enforced = {"type": "object", "additionalProperties": False, "properties": {"a": {
        "type": "integer", "minimum": -(2**53 - 1), "maximum": 2**53 - 1}},
                "x-guidance": {"whitespace_flexible": False}}
    assert [c.params.structured for c in engine.calls] == [
        Structured("json", enforced), Structured("json_object"),
        Structured("grammar", "root ::= \"a\""), Structured("json", enforced)]
    assert tool_chunks[-1].finish_reason == "tool_calls"


def test_fim_prompt_from_the_tokenizers_own_tokens(tmp_path: Path) -> None:
    engine = FakeEngine(vocab={"<fim_prefix>": 901, "<fim_suffix>": 902, "<fim_middle>": 903})

    async def go() -> VllmBackend:
        backend = await started(tmp_path, engine)
        await collect(backend, req(TextPrompt("def f():\n"), suffix="\n    return x\n"))
        return backend

    backend = run(go())
    tok = engine.tokenizer
    assert engine.calls[0].prompt == [
        *tok.encode("", True), 901, *tok.encode("def f():\n", False), 902,
        *tok.encode("\n    return x\n", False), 903]
    assert backend.info.capabilities.fim


def test_engine_rejection_before_output_is_raised_as_is(tmp_path: Path) -> None:
    engine = FakeEngine(fail_with=InvalidParameter("bad schema", param="response_format"))

    async def go() -> None:
        backend = await started(tmp_path, engine)
        with pytest.raises(InvalidParameter, match="bad schema"):
            await collect(backend, req())

    run(go())


def test_unexpected_engine_error_and_abort_finish_are_engine_failures(tmp_path: Path) -> None:
    async def go() -> None:
        broken = await started(tmp_path, FakeEngine(fail_with=RuntimeError("boom")))
        with pytest.raises(EngineFailure):
            await collect(broken, req())
        aborted = await started(tmp_path, FakeEngine(finish="abort"))
        with pytest.raises(EngineFailure, match="abort"):
            await collect(aborted, req())

    run(go())


def test_not_started_is_not_ready(tmp_path: Path) -> None:
    backend = VllmBackend(make_spec(tmp_path), CPU, reason="test", loader=lambda a: FakeEngine())
    with pytest.raises(NotReady):
        run(collect(backend, req()))
    assert backend.info.backend == "vllm" and backend.info.device == "cpu"
    assert backend.info.context_length == 64


def test_engine_args_pass_through_with_the_promised_context(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, tokenizer="./hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text("{}")
    args = engine_args(spec.model_copy(update={"vllm": spec.vllm.model_copy(update={
        "engine_args": {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8}})})
        if spec.vllm else spec)
    assert args["tensor_parallel_size"] == 2 and args["gpu_memory_utilization"] == 0.8
    assert args["max_model_len"] == 64 and args["tokenizer"] == args["model"]
    # llguidance unless the YAML picks another structured-output backend
    assert args["structured_outputs_config"] == {"backend": "guidance"}
    chosen = make_spec(tmp_path, engine_args={"structured_outputs_config": {"backend": "auto"}})
    assert engine_args(chosen)["structured_outputs_config"] == {"backend": "auto"}


@pytest.mark.parametrize(("engine_extra", "match"), [
    ({"max_model_len": 128}, "differs from context_length"),
    ({"model": "x"}, "set vllm.model"),
])
def test_conflicting_engine_args_are_refused(tmp_path: Path, engine_extra: dict[str, Any],
                                             match: str) -> None:
    spec = make_spec(tmp_path, engine_args=engine_extra)
    with pytest.raises(BackendUnavailable, match=match):
        engine_args(spec)


def test_missing_local_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate({"id": "m", "vllm": {"model": "./nowhere"},
                                     "base_dir": tmp_path})
    with pytest.raises(BackendUnavailable, match="make vllm-model"):
        engine_args(spec)
    hub = ModelSpec.model_validate({"id": "m", "vllm": {"model": "org/name"}})
    assert engine_args(hub)["model"] == "org/name"


def test_registry_creates_the_vllm_adapter_without_importing_vllm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lokal.backends import registry

    monkeypatch.setattr(registry, "_importable", lambda m: True)
    backend = create_backend(make_spec(tmp_path), CPU, forced="vllm")
    assert isinstance(backend, VllmBackend)
    assert "CPU build" in backend.info.backend_reason
    assert "vllm" not in sys.modules and "torch" not in sys.modules


def test_stream_cancelled_by_the_server_aborts_even_inside_a_cancelled_scope(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Starlette/anyio cancel a disconnected client's stream with a cancel scope that re-raises
    at every await, so the clean-up must not depend on awaiting."""
    import anyio

    engine = FakeEngine(endless=True)

    async def go() -> VllmBackend:
        backend = await started(tmp_path, engine)
        got = 0
        with anyio.CancelScope() as scope:
            async for _ in backend.generate(req(sampling=SamplingParams(max_tokens=50))):
                got += 1
                if got == 3:
                    scope.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert engine.closed == ["r1"]  # no engine stream left running
        return backend

    with caplog.at_level(logging.INFO, logger="lokal.backends.vllm.backend"):
        backend = run(go())
    assert engine.aborted == ["r1"]
    assert backend.stats().running == 0 and backend.stats().cancelled == 1
    assert "r1: cancelled after" in caplog.text


def test_logprobs_are_asked_for_and_carried_on_each_chunk(tmp_path: Path) -> None:
    entry = TokenLogprob("Hel", (72, 101, 108), -0.5, top=(TopLogprob("Hel", (72,), -0.5),))
    engine = FakeEngine(logprob=entry)

    async def go() -> tuple[list[Chunk], list[Chunk]]:
        backend = await started(tmp_path, engine)
        plain = await collect(backend, req())
        return plain, await collect(backend, req(logprobs=LogprobsRequest(3)))

    plain, with_logprobs = run(go())
    assert [c.params.logprobs for c in engine.calls] == [None, 3]
    assert all(c.logprobs == () for c in plain)
    texts = [c for c in with_logprobs if c.text]
    assert texts and all(c.logprobs == (entry,) for c in texts)


def test_fim_with_a_token_prompt_and_refused_for_chat(tmp_path: Path) -> None:
    engine = FakeEngine(vocab={"<fim_prefix>": 901, "<fim_suffix>": 902, "<fim_middle>": 903})

    async def go() -> None:
        backend = await started(tmp_path, engine)
        await collect(backend, req(TokenPrompt((5, 6)), suffix="z"))
        with pytest.raises(InvalidParameter) as info:
            await collect(backend, req(ChatPrompt((ChatMessage("user", "hi"),)), suffix="z"))
        assert info.value.param == "suffix"

    run(go())
    tok = engine.tokenizer
    assert engine.calls[0].prompt == [*tok.encode("", True), 901, 5, 6, 902,
                                      *tok.encode("z", False), 903]


def test_each_choices_first_chunk_carries_the_prompt_tokens(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def go() -> tuple[list[Chunk], int]:
        backend = await started(tmp_path, engine)
        request = req(n=2)
        return await collect(backend, request), await backend.count_tokens(request)

    chunks, counted = run(go())
    assert counted == 3  # BOS + "hi"
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        assert mine[0].prompt_tokens == counted and mine[0].text == "Hel"
        assert all(c.prompt_tokens is None for c in mine[1:])
        assert mine[-1].usage is not None and mine[-1].usage.prompt_tokens == counted


def test_a_deadline_ends_the_stream_and_aborts_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine(endless=True)

    async def go() -> list[Chunk]:
        backend = await started(tmp_path, engine)
        got: list[Chunk] = []
        deadline = Deadline(time.perf_counter() + 0.05, 0.05)
        with pytest.raises(DeadlineExceeded) as info:
            async for chunk in backend.generate(req(deadline=deadline)):
                got.append(chunk)
        assert info.value.seconds == 0.05
        await asyncio.sleep(0.01)  # the abort runs as its own task
        assert backend.stats().running == 0 and backend.stats().cancelled == 1
        return got

    got = run(go())
    assert got and all(c.text == "x" for c in got)
    assert engine.aborted == ["r1"] and engine.closed == ["r1"]


def test_a_passed_deadline_never_reaches_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine()

    async def go() -> None:
        backend = await started(tmp_path, engine)
        with pytest.raises(DeadlineExceeded):
            await collect(backend, req(deadline=Deadline(time.perf_counter() - 1, 2.0)))

    run(go())
    assert engine.calls == []
