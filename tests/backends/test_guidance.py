"""Constraints compiled by llguidance over a real (tiny) llama.cpp vocabulary: enforced,
refused with the keyword and its path, refused at a configured limit, refused when nothing can
satisfy them; and the mask admits exactly what the schema allows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lokal.backends.base import Constraint, Tool
from lokal.backends.errors import InvalidParameter
from lokal.backends.llamacpp.guidance import LOOSEN_MAX_TOOLS, Guidance, LazyCall, apply_mask
from lokal.backends.spec import GrammarLimits
from lokal.backends.tool_formats import CallTrigger
from lokal.backends.tools import tool_call_schema
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


def takes(guidance: Guidance, constraint: Constraint, text: str) -> bool:
    """Whether a fresh matcher for `constraint` takes `text` whole and could end there."""
    (matcher,) = guidance.matchers(constraint, 1)
    return bool(matcher.consume_tokens(char_ids(text))) and bool(matcher.is_accepting())


OPEN_WEATHER = {"type": "object", "required": ["city"],
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}


def test_objects_are_closed_unless_the_schema_opens_them(vocab: tuple[Any, int]) -> None:
    guidance = Guidance(*vocab)
    assert takes(guidance, schema(OPEN_WEATHER), '{"city": "Oslo", "unit": "c"}')
    assert not takes(guidance, schema(OPEN_WEATHER), '{"city": "Oslo", "wind": 3}')
    opened = {**OPEN_WEATHER, "additionalProperties": True}
    assert takes(guidance, schema(opened), '{"city": "Oslo", "wind": 3}')
    split = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}},
                        "required": ["a"]},
                       {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}
    assert takes(guidance, schema(split), '{"a": 1, "b": "x"}')
    assert not takes(guidance, schema(split), '{"a": 1, "b": "x", "c": 2}')


def test_whitespace_between_json_tokens_is_one_space_or_newline(vocab: tuple[Any, int]) -> None:
    guidance = Guidance(*vocab)
    assert takes(guidance, schema(OPEN_WEATHER), '{\n"city": "Oslo"\n}')
    assert not takes(guidance, schema(OPEN_WEATHER), '{\n\n"city": "Oslo"}')
    assert not takes(guidance, schema(OPEN_WEATHER), '{"city":  "Oslo"}')


def lazy_call(vocab: tuple[Any, int], fmt: str = "hermes") -> LazyCall:
    call_schema = tool_call_schema([Tool("get_weather", parameters=OPEN_WEATHER)],
                                   parallel=False)
    constraint = Constraint("tool_calls", schema=call_schema, lazy=True,
                            names=frozenset({"get_weather"}))
    (prototype,) = Guidance(*vocab).matchers(constraint, 1)
    return LazyCall(prototype, CallTrigger(fmt, constraint.names),  # type: ignore[arg-type]
                    char_ids)


def goes_on(matcher: Any, text: str) -> bool:
    """Whether `matcher` (left as it is) takes all of `text` next."""
    ids = char_ids(text)
    return bool(matcher.deep_copy().try_consume_tokens(ids) == len(ids))


def test_a_call_the_model_begins_is_held_to_its_schema_until_it_closes(
        vocab: tuple[Any, int]) -> None:
    lazy = lazy_call(vocab)
    assert lazy.begun("Sure. ") is None and lazy.begun("<tool_") is None
    matcher = lazy.begun('call>\n{"name": "get_weather", "arguments": {"city": "Oslo", ')
    assert matcher is not None
    assert not goes_on(matcher, '"wind"')  # an undeclared key
    assert not goes_on(matcher, '"unit": "kelvin"')  # off the enum
    assert goes_on(matcher, '"unit": "f"')
    assert matcher.consume_tokens(char_ids('"unit": "f"}}')) and matcher.is_accepting()
    lazy.closed()
    assert lazy.begun("\n</tool_call> Done.") is None


def test_a_fenced_call_is_held_from_its_name_with_the_models_indentation(
        vocab: tuple[Any, int]) -> None:
    lazy = lazy_call(vocab)
    matcher = lazy.begun('```json\n{\n  "name": "get_weather"')
    assert matcher is not None
    assert matcher.consume_tokens(char_ids(',\n  "arguments": {\n    "city": "Oslo"\n  }\n}'))
    assert matcher.is_accepting()


def test_unenforceable_tools_in_auto_mode_fall_back_to_any_object(
        vocab: tuple[Any, int]) -> None:
    tools = [Tool("f", parameters={
        "type": "object", "properties": {"n": {"type": "number", "not": {"const": 3}}}})]
    strict = Constraint("tool_calls", schema=tool_call_schema(tools, parallel=False),
                        lazy=True, names=frozenset({"f"}))
    with pytest.raises(InvalidParameter, match="'not'"):
        Guidance(*vocab).matchers(strict, 1)
    loose = dataclasses.replace(strict, best_effort=True)
    assert takes(Guidance(*vocab), loose, '{"name": "f", "arguments": {"n": 3, "m": 1}}')


@pytest.mark.parametrize(("count", "held"), [(LOOSEN_MAX_TOOLS, True),
                                             (LOOSEN_MAX_TOOLS + 1, False)])
def test_finding_the_tools_to_loosen_compiles_a_bounded_number(
        vocab: tuple[Any, int], count: int, held: bool) -> None:
    """Up to the bound each tool is compiled alone and only the unenforceable one loosened;
    past it (a request could send thousands) every call's arguments are loosened at once."""
    bad = Tool("bad", parameters={
        "type": "object", "properties": {"n": {"type": "number", "not": {"const": 3}}}})
    good = [Tool(f"t{i}", parameters=OPEN_WEATHER) for i in range(count - 1)]
    tools = [bad, *good]
    constraint = Constraint("tool_calls", schema=tool_call_schema(tools, parallel=False),
                            lazy=True, names=frozenset(t.name for t in tools),
                            best_effort=True)
    extra_key = '{"name": "t0", "arguments": {"city": "Oslo", "wind": 3}}'
    assert takes(Guidance(*vocab), constraint, extra_key) is not held
    assert takes(Guidance(*vocab), constraint, '{"name": "bad", "arguments": {"n": 3}}')
