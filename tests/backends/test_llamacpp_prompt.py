"""The prompt front end on llama.cpp's own tokenizer: a tiny GGUF whose ids the tests know."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    GenerationRequest,
    TextPrompt,
)
from lokal.backends.llamacpp.tokenizer import LlamaTokenizer
from lokal.backends.prompt import PromptFrontEnd
from tests.tiny_gguf import BOS, FIM_MID, FIM_PRE, FIM_SUF, char_ids, write_tiny_gguf


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaTokenizer]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("prompt") / "tiny.gguf")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(path), params=params, verbose=False)
    yield LlamaTokenizer(model)
    model.close()


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
