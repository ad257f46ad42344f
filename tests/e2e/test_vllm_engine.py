"""VllmBackend on the real vLLM engine, for what lokal's HTTP API does not pass through yet:
structured outputs, FIM refusal, engine-argument validation, abort freeing the engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Chunk,
    Constraint,
    GenerationRequest,
    SamplingParams,
    TextPrompt,
)
from lokal.backends.errors import BackendUnavailable, InvalidParameter
from lokal.backends.hardware import probe
from lokal.backends.spec import ModelSpec
from tests.conftest import VLLM_CONFIG

pytestmark = pytest.mark.backends("vllm")
T = TypeVar("T")


class Loop:
    """One event loop on a thread for the whole module: AsyncLLM binds to the loop it first
    serves, so every test must talk to it from the same one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def vllm(loop: Loop, backend_name: str) -> Iterator[Any]:
    from lokal.backends.vllm.backend import VllmBackend

    backend = VllmBackend(ModelSpec.from_yaml(VLLM_CONFIG), probe(), reason="test")
    loop.run(backend.start(), timeout=900)
    yield backend
    loop.run(backend.stop())


def ask(prompt: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest("t-" + str(abs(hash((prompt, repr(kw))))),
                             ChatPrompt((ChatMessage("user", prompt),)), **kw)


async def text_of(backend: Any, request: GenerationRequest) -> tuple[str, list[Chunk]]:
    chunks = [c async for c in backend.generate(request)]
    return "".join(c.text for c in chunks), chunks


def test_json_schema_constraint_gives_schema_valid_json(vllm: Any, loop: Loop) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    text, chunks = loop.run(text_of(vllm, ask(
        "Give me a person as JSON.", constraint=Constraint("json_schema", schema=schema),
        sampling=SamplingParams(temperature=0, max_tokens=60))))
    value = json.loads(text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int), text
    assert chunks[-1].finish_reason == "stop"


def test_grammar_constraint_limits_the_output(vllm: Any, loop: Loop) -> None:
    grammar = 'root ::= ("yes" | "no")'
    text, _ = loop.run(text_of(vllm, ask(
        "Is the sky blue?", constraint=Constraint("grammar", grammar=grammar),
        sampling=SamplingParams(temperature=1.0, seed=3, max_tokens=10))))
    assert text in ("yes", "no")


def test_tool_call_constraint_finishes_with_tool_calls(vllm: Any, loop: Loop) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    text, chunks = loop.run(text_of(vllm, ask(
        "What is the weather in Paris?", constraint=Constraint("tool_calls", schema=schema),
        sampling=SamplingParams(temperature=0, max_tokens=40))))
    assert "city" in json.loads(text)
    assert chunks[-1].finish_reason == "tool_calls"


def test_invalid_schema_is_rejected_before_the_first_chunk(vllm: Any, loop: Loop) -> None:
    request = ask("x", constraint=Constraint("grammar", grammar="this is ::: not a grammar"),
                  sampling=SamplingParams(max_tokens=4))
    with pytest.raises(InvalidParameter):
        loop.run(text_of(vllm, request))


def test_suffix_without_fim_tokens_is_refused(vllm: Any, loop: Loop) -> None:
    # SmolLM2-Instruct's tokenizer has no <fim_*> tokens: FIM cannot be honoured, so it is a 400.
    request = GenerationRequest("fim", TextPrompt("def f():"), suffix="    return 1")
    with pytest.raises(InvalidParameter) as info:
        loop.run(text_of(vllm, request))
    assert info.value.param == "suffix"
    assert not vllm.info.capabilities.fim


def test_closing_the_stream_aborts_the_engine_request(vllm: Any, loop: Loop) -> None:
    async def go() -> int:
        stream = vllm.generate(GenerationRequest(
            "endless", TextPrompt("1, 2, 3, 4, 5,"),
            sampling=SamplingParams(temperature=0, max_tokens=8000)))
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()
        engine = vllm._engine._llm
        # The abort is its own task, answered by the engine process: wait for it, with room
        # for a busy machine; a request never aborted runs its 8000 tokens, far past this.
        deadline = time.monotonic() + 30
        while engine.get_num_unfinished_requests() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return int(engine.get_num_unfinished_requests())

    assert loop.run(go()) == 0
    assert vllm.stats().cancelled >= 1


def test_unknown_engine_argument_is_refused_by_vllm(backend_name: str) -> None:
    from lokal.backends.vllm.engine import load_engine

    with pytest.raises(BackendUnavailable, match="no_such_argument"):
        load_engine({"model": "/nonexistent", "no_such_argument": 1})


@pytest.mark.parametrize("schema", [
    {"type": "integer", "minimum": 3},
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 4},
    {"type": "object", "properties": {"e": {"type": "string", "format": "email"}},
     "required": ["e"], "additionalProperties": False},
], ids=["minimum", "uniqueItems", "format"])
def test_schema_keywords_llamacpp_refuses_are_enforced_or_refused_by_vllm(
        vllm: Any, loop: Loop, schema: dict[str, Any]) -> None:
    """Never silently dropped: vLLM either enforces the keyword or refuses the schema."""
    import jsonschema

    request = ask("Reply in JSON.", constraint=Constraint("json_schema", schema=schema),
                  sampling=SamplingParams(temperature=1.0, seed=11, max_tokens=60))
    try:
        text, chunks = loop.run(text_of(vllm, request))
    except InvalidParameter:
        return
    if chunks[-1].finish_reason == "stop":
        jsonschema.validate(json.loads(text), schema,
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    else:
        assert len(text) > 0
