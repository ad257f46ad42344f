"""Constraints compiled by llguidance over a real (tiny) llama.cpp vocabulary: enforced,
refused with the keyword and its path, refused at a configured limit, refused when nothing can
satisfy them; and the mask admits exactly what the schema allows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from backends.base import Constraint
from backends.errors import InvalidParameter
from backends.llamacpp.guidance import Guidance, apply_mask
from backends.spec import GrammarLimits
from tests.tiny_gguf import char_ids, write_tiny_gguf


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    path = write_tiny_gguf(tmp_path_factory.mktemp("guidance") / "tiny.gguf")
    model = LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                       verbose=False)
    yield model.vocab, model.n_vocab()
    model.close()


def schema(value: Any) -> Constraint:
    return Constraint("json_schema", schema=value)


def test_the_mask_admits_only_what_the_schema_allows(vocab: tuple[Any, int]) -> None:
    guidance = Guidance(*vocab)
    (matcher,) = guidance.matchers(schema({"type": "integer", "minimum": 5}), 1)
    logits = np.zeros(vocab[1], dtype=np.float32)
    apply_mask(matcher, logits)
    allowed = set(np.flatnonzero(np.isfinite(logits)).tolist())
    digits = set(char_ids("123456789"))
    assert digits <= allowed and char_ids("a")[0] not in allowed and char_ids("{")[0] \
        not in allowed


def test_n_matchers_are_independent_copies(vocab: tuple[Any, int]) -> None:
    first, second = Guidance(*vocab).matchers(schema({"enum": ["ab", "cd"]}), 2)
    assert first.consume_token(char_ids('"')[0]) and first.consume_token(char_ids("a")[0])
    assert second.consume_token(char_ids('"')[0]) and second.consume_token(char_ids("c")[0])


@pytest.mark.parametrize(("value", "words"), [
    ({"type": "object", "properties": {"t": {"type": "array", "uniqueItems": True}}},
     "'uniqueItems' at /properties/t"),
    ({"type": "object", "properties": {"x": False}, "required": ["x"]}, "cannot be enforced"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, "cannot be enforced"),
])
def test_refusals_say_why(vocab: tuple[Any, int], value: Any, words: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        Guidance(*vocab).matchers(schema(value), 1)
    assert words in caught.value.message and caught.value.param == "response_format"


def test_a_configured_limit_refuses_a_grammar_over_it(vocab: tuple[Any, int]) -> None:
    enum = schema({"enum": [f"choice-{i}" for i in range(2000)]})
    Guidance(*vocab).matchers(enum, 1)  # fine within the defaults
    tight = Guidance(*vocab, GrammarLimits(initial_lexer_fuel=1_000))
    with pytest.raises(InvalidParameter) as caught:
        tight.matchers(enum, 1)
    assert "limit" in caught.value.message or "too" in caught.value.message
