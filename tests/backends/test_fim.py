"""Fill-in-the-middle: finding a vocabulary's FIM family, building the PSM prompt, and refusing
`suffix` for a model without FIM tokens; checked against a tiny GGUF's real vocabulary too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from lokal.backends.errors import InvalidParameter
from lokal.backends.fim import FimFormat, fim_prompt, find_fim_format
from tests.tiny_gguf import BOS, FIM_MID, FIM_PRE, FIM_SUF, char_ids, write_tiny_gguf

STARCODER = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
QWEN = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
DEEPSEEK = ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>")
PLAIN = ("<s>", "</s>", "a", "b", "def", "▁")


@pytest.mark.parametrize("tokens", [STARCODER, QWEN, DEEPSEEK])
def test_each_family_is_found_by_its_three_tokens(tokens: tuple[str, str, str]) -> None:
    fmt = find_fim_format({*PLAIN, *tokens})
    assert fmt is not None
    assert (fmt.prefix, fmt.suffix, fmt.middle) == tokens


@pytest.mark.parametrize("missing", range(3))
def test_a_family_with_a_token_missing_is_not_found(missing: int) -> None:
    for tokens in (STARCODER, QWEN, DEEPSEEK):
        partial = [t for i, t in enumerate(tokens) if i != missing]
        assert find_fim_format({*PLAIN, *partial}) is None


def test_a_vocabulary_without_fim_tokens_has_no_format() -> None:
    assert find_fim_format(set(PLAIN)) is None
    assert find_fim_format(set()) is None


def test_a_mixed_vocabulary_takes_the_first_complete_family() -> None:
    # StarCoder's tokens are listed first, but two of three do not make a family.
    fmt = find_fim_format({*STARCODER[:2], *QWEN})
    assert fmt is not None and fmt.prefix == QWEN[0]
    both = find_fim_format({*QWEN, *STARCODER})
    assert both is not None and both.prefix == STARCODER[0]


def test_a_token_to_id_mapping_is_searched_by_its_keys() -> None:
    # What a Hugging Face tokenizer's get_vocab() returns.
    vocab = {token: i for i, token in enumerate((*PLAIN, *DEEPSEEK))}
    fmt = find_fim_format(vocab)
    assert fmt is not None and fmt.middle == DEEPSEEK[2]
    by_id: Any = {i: token for token, i in vocab.items()}
    assert find_fim_format(by_id) is None


def test_the_prompt_is_prefix_suffix_middle() -> None:
    fmt = FimFormat(*QWEN)
    assert fim_prompt("def f(x):\n    ", "\n    return y", fmt, "coder") == (
        "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>")
    assert fim_prompt("", "", fmt, "coder") == "<|fim_prefix|><|fim_suffix|><|fim_middle|>"


def test_a_model_without_fim_tokens_refuses_suffix() -> None:
    with pytest.raises(InvalidParameter) as caught:
        fim_prompt("a", "b", find_fim_format(set(PLAIN)), "tiny-chat")
    assert caught.value.param == "suffix"
    assert "'tiny-chat'" in caught.value.message and "`suffix`" in caught.value.message


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], Any]]:
    """The tiny GGUF's token list, and the model loaded by llama.cpp with its vocabulary only."""
    import gguf

    path = write_tiny_gguf(tmp_path_factory.mktemp("fim") / "tiny.gguf")
    field = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model: Any = LlamaModel(path_model=str(path), params=params, verbose=False)
    yield tokens, model
    model.close()


def test_a_real_vocabulary_finds_the_tokens_llama_cpp_reads_from_metadata(
        tiny_vocab: tuple[list[str], Any]) -> None:
    tokens, model = tiny_vocab
    fmt = find_fim_format(tokens)
    assert fmt is not None
    # The vLLM path finds FIM tokens by text; llama.cpp by the GGUF's fim_* ids: same tokens.
    vocab = model.vocab
    assert [tokens.index(fmt.prefix), tokens.index(fmt.suffix), tokens.index(fmt.middle)] == [
        llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
        llama_cpp.llama_vocab_fim_mid(vocab)]


def test_the_rendered_prompt_tokenizes_to_the_special_tokens(
        tiny_vocab: tuple[list[str], Any]) -> None:
    tokens, model = tiny_vocab
    before, after = "def f(x):\n  ", "\n  return y"
    text = fim_prompt(before, after, find_fim_format(tokens), "tiny")
    ids = model.tokenize(text.encode(), add_bos=True, special=True)
    assert ids == [BOS, FIM_PRE, *char_ids(before), FIM_SUF, *char_ids(after), FIM_MID]
