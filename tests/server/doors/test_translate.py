"""What every door's translator shares: sampling over a protocol's defaults, logit_bias, the
schema limits, and the one constraint a request gets (the tool plan: test_tool_plan.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from lokal.backends.base import Constraint, SamplingParams, Tool
from lokal.server.doors.translate import (
    DEFAULT_SAMPLING,
    ToolChoice,
    ToolPlan,
    check_schema,
    constraint_of,
    limited,
    logit_bias,
    output_constraint,
    sampling,
    stops,
    tool_plan,
)
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits

WEATHER = Tool("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False})
TIME = Tool("get_time", parameters={"type": "object", "properties": {
    "zone": {"type": "string"}}, "required": ["zone"]})
LIMITS = SchemaLimits()
# A protocol with defaults of its own (Ollama's shape: warmer sampling, a top-k cut).
PROTOCOL = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, repetition_penalty=1.1,
                          max_tokens=128, seed=7)


def _refused(call: Any, *args: Any, **kwargs: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        call(*args, **kwargs)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


# -- sampling ------------------------------------------------------------------------------


def test_sampling_keeps_the_protocols_defaults_for_what_a_request_leaves_out() -> None:
    assert sampling(PROTOCOL) == PROTOCOL
    assert sampling() == DEFAULT_SAMPLING == SamplingParams()
    only_top_p = sampling(PROTOCOL, top_p=0.5)
    assert only_top_p.top_p == 0.5
    assert (only_top_p.temperature, only_top_p.top_k, only_top_p.max_tokens) == (0.8, 40, 128)


def test_sampling_takes_what_a_request_sets_zeros_included() -> None:
    got = sampling(PROTOCOL, temperature=0.0, top_p=0.0, top_k=0, min_p=0.0, seed=0,
                   max_tokens=1, presence_penalty=0.0, frequency_penalty=-1.5,
                   repetition_penalty=1.0, logit_bias={5: -100.0}, stop=["\n", "END"])
    assert got == SamplingParams(temperature=0.0, top_p=0.0, top_k=0, min_p=0.0, seed=0,
                                 max_tokens=1, presence_penalty=0.0, frequency_penalty=-1.5,
                                 repetition_penalty=1.0, logit_bias={5: -100.0},
                                 stop=("\n", "END"))


def test_empty_stop_strings_are_dropped() -> None:
    assert sampling(stop=["", "x", ""]).stop == ("x",)
    assert sampling(stop="").stop == ()
    assert sampling(stop="###").stop == ("###",)
    assert stops(None) == ()


def test_sampling_keeps_a_protocols_default_stop_strings() -> None:
    defaults = SamplingParams(stop=("<|end|>",))
    assert sampling(defaults).stop == ("<|end|>",)


# -- logit_bias ----------------------------------------------------------------------------


def test_logit_bias_maps_token_ids_to_floats() -> None:
    assert logit_bias({"42": 5, "7": -100, "0": 100.0}) == {42: 5.0, 7: -100.0, 0: 100.0}
    assert logit_bias(None) == {}


@pytest.mark.parametrize("key", ["abc", "1.5", "", " 3", "+3", "0x10"])
def test_logit_bias_refuses_keys_that_are_not_token_ids(key: str) -> None:
    err = _refused(logit_bias, {key: 1.0})
    assert (err.param, err.code) == ("logit_bias", "invalid_value")
    assert repr(key) in err.message


@pytest.mark.parametrize("value", [100.5, -101.0, float("inf"), float("nan")])
def test_logit_bias_refuses_values_outside_plus_minus_100(value: float) -> None:
    err = _refused(logit_bias, {"3": value})
    assert (err.param, err.code) == ("logit_bias", "invalid_value")
    assert "-100..100" in err.message


@pytest.mark.parametrize("key", ["--5", "²"])
def test_logit_bias_refuses_keys_int_cannot_read(key: str) -> None:
    err = _refused(logit_bias, {key: 1.0})
    assert (err.param, err.code) == ("logit_bias", "invalid_value")


# -- check_schema --------------------------------------------------------------------------


def test_a_schema_within_the_limits_passes() -> None:
    check_schema(WEATHER.parameters, "response_format", LIMITS)
    check_schema({"type": "array", "minItems": 10, "maxItems": 10}, "p",
                 SchemaLimits(max_items=10))


def test_a_schema_over_the_byte_limit_is_schema_too_large() -> None:
    schema = {"type": "string", "description": "x" * 100}
    err = _refused(check_schema, schema, "text.format.schema", SchemaLimits(max_bytes=100))
    assert (err.param, err.code) == ("text.format.schema", "schema_too_large")
    assert "LOKAL_MAX_SCHEMA_BYTES" in err.message
    check_schema(schema, "p", SchemaLimits(max_bytes=200))


def _nested(depth: int) -> dict[str, Any]:
    """A schema `depth` levels deep, counting its leaf values ("string") as the last level."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 2):
        schema = {"items": schema}
    return schema


def test_a_schema_over_the_depth_limit_is_schema_too_deep() -> None:
    check_schema(_nested(5), "format", SchemaLimits(max_depth=5))
    err = _refused(check_schema, _nested(6), "format", SchemaLimits(max_depth=5))
    assert (err.param, err.code) == ("format", "schema_too_deep")
    assert "LOKAL_MAX_SCHEMA_DEPTH" in err.message
    # lists count as a level too: object, anyOf's list, object, "string"
    check_schema({"anyOf": [{"type": "string"}]}, "format", SchemaLimits(max_depth=4))
    _refused(check_schema, {"anyOf": [{"type": "string"}]}, "format",
             SchemaLimits(max_depth=3))


@pytest.mark.parametrize("keyword", ["minItems", "maxItems"])
def test_array_items_over_the_limit_are_schema_too_large(keyword: str) -> None:
    deep = {"type": "object", "properties": {"xs": {"type": "array", keyword: 1_000_000_000}}}
    err = _refused(check_schema, deep, "response_format", LIMITS)
    assert (err.param, err.code) == ("response_format", "schema_too_large")
    assert keyword in err.message and "LOKAL_MAX_SCHEMA_ITEMS" in err.message


# -- limited and output_constraint ---------------------------------------------------------


def test_limited_passes_what_is_within_the_limits() -> None:
    c = tool_plan([WEATHER], ToolChoice("required")).constraint
    assert limited(c, LIMITS) is c
    assert limited(None, LIMITS) is None
    grammar = Constraint(kind="grammar", grammar="root ::= \"x\"")
    assert limited(grammar, SchemaLimits(max_bytes=1)) is grammar  # no schema to measure


def test_limited_drops_a_best_effort_constraint_over_the_limits() -> None:
    tiny = SchemaLimits(max_bytes=50)
    auto = tool_plan([WEATHER], ToolChoice("auto")).constraint
    assert auto is not None and auto.best_effort
    assert limited(auto, tiny) is None


def test_limited_refuses_a_forced_or_strict_constraint_over_the_limits() -> None:
    tiny = SchemaLimits(max_bytes=50)
    forced = tool_plan([WEATHER], ToolChoice("required")).constraint
    err = _refused(limited, forced, tiny)
    assert (err.param, err.code) == ("tools", "schema_too_large")
    strict = replace(WEATHER, strict=True)
    _refused(limited, tool_plan([strict], None).constraint, tiny)
    fmt = Constraint(kind="json_schema", schema=WEATHER.parameters)
    assert _refused(limited, fmt, tiny).param == "response_format"


def test_output_constraint_is_any_object_or_the_schema_within_the_limits() -> None:
    assert output_constraint("json_object", None, "format", LIMITS) == \
        Constraint(kind="json_object")
    schema = {"type": "object"}
    assert output_constraint("json_schema", schema, "format", LIMITS) == \
        Constraint(kind="json_schema", schema=schema)
    err = _refused(output_constraint, "json_schema", _nested(4), "text.format",
                   SchemaLimits(max_depth=3))
    assert (err.param, err.code) == ("text.format", "schema_too_deep")


# -- constraint_of -------------------------------------------------------------------------


def _never() -> Constraint | None:
    raise AssertionError("the format's constraint was built although tools were given")


def test_tools_and_a_format_together_are_a_400_naming_the_format() -> None:
    plan = tool_plan([WEATHER], None)
    err = _refused(constraint_of, plan, True, _never, "text.format", LIMITS)
    assert (err.param, err.code) == ("text.format", "unsupported_parameter")


def test_tools_win_and_the_format_is_built_only_without_them() -> None:
    plan = tool_plan([WEATHER], ToolChoice("required"))
    assert constraint_of(plan, False, _never, "response_format", LIMITS) is plan.constraint
    fmt = Constraint(kind="json_object")
    calls: list[int] = []

    def output() -> Constraint:
        calls.append(1)
        return fmt

    assert constraint_of(ToolPlan(), True, output, "response_format", LIMITS) is fmt
    # tool_choice none leaves no tools to enforce: the format is the constraint
    none = tool_plan([WEATHER], ToolChoice("none"))
    assert constraint_of(none, True, output, "response_format", LIMITS) is fmt
    assert len(calls) == 2
    assert constraint_of(ToolPlan(), False, lambda: None, "response_format", LIMITS) is None


def test_constraint_of_applies_the_limits_to_the_tools() -> None:
    tiny = SchemaLimits(max_bytes=50)
    assert constraint_of(tool_plan([WEATHER], None), False, _never, "f", tiny) is None
    err = _refused(constraint_of, tool_plan([WEATHER], ToolChoice("required")), False, _never,
                   "f", tiny)
    assert err.param == "tools"
