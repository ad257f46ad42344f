"""The prompt front end on llama.cpp's own tokenizer (a tiny GGUF whose ids the tests know), and
what the engine reports with it: the prompt's size on each choice's first chunk, and the job's
deadline ending the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Chunk,
    Deadline,
    GenerationRequest,
    SamplingParams,
    TextPrompt,
)
from lokal.backends.errors import DeadlineExceeded
from lokal.backends.llamacpp.backend import LlamaCppBackend
from lokal.backends.llamacpp.tokenizer import LlamaTokenizer
from lokal.backends.prompt import PromptFrontEnd
from tests.tiny_gguf import BOS, FIM_MID, FIM_PRE, FIM_SUF, char_ids, tiny_backend, write_tiny_gguf


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaTokenizer]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("prompt") / "tiny.gguf")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(path), params=params, verbose=False)
    yield LlamaTokenizer(model)
    model.close()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LlamaCppBackend]:
    with tiny_backend(tmp_path, parallel=2) as engine:
        yield engine


def test_the_vocabulary_as_a_tokenizer(tokenizer: LlamaTokenizer) -> None:
    assert (tokenizer.bos_text, tokenizer.eos_text) == ("<s>", "</s>")
    assert tokenizer.fim_ids == (FIM_PRE, FIM_SUF, FIM_MID)
    assert tokenizer.special_prefix() == [BOS]
    assert tokenizer.encode("ab", add_special=True) == [BOS, *char_ids("ab")]
    assert tokenizer.encode("a<fim_suffix>", add_special=False) == [*char_ids("a"), FIM_SUF]


def test_fim_and_chat_prompts_on_the_real_tokenizer(tokenizer: LlamaTokenizer) -> None:
    front = PromptFrontEnd(tokenizer, model="tiny", context_length=256,
                           configured_template=None, own_template=None)
    before, after = "def f(x):\n  ", "\n  return y"
    fim = GenerationRequest("r", TextPrompt(before), suffix=after)
    assert front.tokens(fim) == [BOS, FIM_PRE, *char_ids(before), FIM_SUF, *char_ids(after),
                                 FIM_MID]
    chat = front.tokens(GenerationRequest("r", ChatPrompt((ChatMessage("user", "hi"),))))
    assert chat[0] == BOS and chat.count(BOS) == 1


async def _collect(backend: LlamaCppBackend, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in backend.generate(request)]


def test_each_choices_first_chunk_carries_the_prompt_tokens(backend: LlamaCppBackend) -> None:
    request = GenerationRequest("r", TextPrompt("hello there"), n=2,
                                sampling=SamplingParams(max_tokens=3, seed=1))

    async def go() -> tuple[list[Chunk], int]:
        return await _collect(backend, request), await backend.count_tokens(request)

    chunks, counted = asyncio.run(go())
    assert counted == 1 + len("hello there")
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        assert mine[0].prompt_tokens == counted
        assert all(c.prompt_tokens is None for c in mine[1:])
        assert mine[-1].usage is not None and mine[-1].usage.prompt_tokens == counted


def test_a_passed_deadline_ends_the_request_before_it_runs(backend: LlamaCppBackend) -> None:
    request = GenerationRequest("r", TextPrompt("hello"),
                                deadline=Deadline(time.perf_counter() - 1, 5.0))
    with pytest.raises(DeadlineExceeded) as info:
        asyncio.run(_collect(backend, request))
    assert info.value.seconds == 5.0
    assert backend.stats().running == 0 and backend.stats().waiting == 0


def test_a_deadline_passing_mid_stream_ends_it_and_frees_the_slot(
        backend: LlamaCppBackend) -> None:
    async def go() -> Any:
        request = GenerationRequest("r", TextPrompt("hello"),
                                    sampling=SamplingParams(max_tokens=200),
                                    deadline=Deadline(time.perf_counter() + 0.5, 0.5))
        stream = backend.generate(request)
        first = await anext(stream)
        await asyncio.sleep(0.6)  # the consumer holds a chunk while the deadline passes
        with pytest.raises(DeadlineExceeded):
            await anext(stream)
        for _ in range(200):
            if backend.stats().running == 0:
                break
            await asyncio.sleep(0.01)
        return first

    first = asyncio.run(go())
    assert first.prompt_tokens == 1 + len("hello")
    assert backend.stats().running == 0
