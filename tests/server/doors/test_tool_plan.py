"""The tool plan every door shares: tools and tool_choice checked in the caller's words, the
constraint that forces calls (or holds a call the model begins, best effort unless a tool is
strict), and a fresh parser per choice in the model's own format."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jsonschema
import pytest

from lokal.backends.base import Tool
from lokal.server.doors.translate import ToolChoice, ToolPlan, tool_plan
from tests.server.doors.test_translate import TIME, WEATHER, _refused

# -- tool_plan -----------------------------------------------------------------------------


def test_no_tools_or_choice_none_is_an_empty_plan() -> None:
    assert tool_plan([], None) == ToolPlan()
    empty = tool_plan([WEATHER], ToolChoice("none"))
    assert empty == ToolPlan()
    assert empty.constraint is None and empty.tools == () and not empty.names


def test_a_choice_without_tools_names_the_choice_param() -> None:
    err = _refused(tool_plan, [], ToolChoice("auto"), param="tools",
                   choice_param="tool_config.mode")
    assert (err.param, err.code) == ("tool_config.mode", "invalid_value")
    assert "'tools'" in err.message


def test_duplicate_tool_names_are_refused() -> None:
    err = _refused(tool_plan, [WEATHER, TIME, WEATHER], None, param="functions")
    assert (err.param, err.code) == ("functions", "invalid_value")
    assert "unique" in err.message


def test_parameters_that_are_not_an_object_schema_name_the_callers_field() -> None:
    bad = Tool("f", parameters={"type": "array"})
    err = _refused(tool_plan, [WEATHER, bad], None, param="tools", schema_field="input_schema")
    assert (err.param, err.code) == ("tools[1].input_schema", "invalid_value")
    err = _refused(tool_plan, [bad], None)
    assert err.param == "tools[0].function.parameters"
    # no "type" at all, or no parameters, is an object schema
    untyped = Tool("g", parameters={"properties": {}})
    bare = Tool("h")
    assert tool_plan([untyped, bare], None).names == {"g", "h"}


def test_a_named_choice_must_name_an_offered_tool() -> None:
    err = _refused(tool_plan, [WEATHER], ToolChoice("required", "get_news"),
                   choice_param="tool_choice")
    assert (err.param, err.code) == ("tool_choice", "invalid_value")
    assert "get_news" in err.message


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def _valid(schema: Any, instance: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


def test_required_forces_calls_to_any_tool_in_parallel() -> None:
    plan = tool_plan([WEATHER, TIME], ToolChoice("required"))
    assert plan.forced and plan.names == {"get_weather", "get_time"}
    assert plan.tools == (WEATHER, TIME)
    c = plan.constraint
    assert c is not None and c.kind == "tool_calls" and not c.lazy and not c.best_effort
    assert _valid(c.schema, [_call("get_weather", city="Oslo"), _call("get_time", zone="UTC")])
    assert not _valid(c.schema, [])  # at least one call
    assert not _valid(c.schema, [_call("get_weather", town="Oslo")])  # wrong argument
    assert not _valid(c.schema, [_call("get_news")])  # no such tool
    assert not _valid(c.schema, _call("get_weather", city="Oslo"))  # not a list


def test_a_named_tool_forces_one_call_to_that_tool() -> None:
    plan = tool_plan([WEATHER, TIME], ToolChoice("required", "get_time"))
    c = plan.constraint
    assert plan.forced and c is not None and not c.lazy
    assert _valid(c.schema, _call("get_time", zone="CET"))
    assert not _valid(c.schema, _call("get_weather", city="Oslo"))
    assert not _valid(c.schema, _call("get_time"))  # zone is required
    assert not _valid(c.schema, [_call("get_time", zone="CET")])


def test_required_without_parallel_calls_is_one_call_object() -> None:
    c = tool_plan([WEATHER, TIME], ToolChoice("required"), parallel=False).constraint
    assert c is not None
    assert _valid(c.schema, _call("get_weather", city="Oslo"))
    assert not _valid(c.schema, [_call("get_weather", city="Oslo")])


@pytest.mark.parametrize("choice", [None, ToolChoice("auto")])
def test_auto_is_a_lazy_best_effort_constraint_over_the_names(choice: ToolChoice | None) -> None:
    plan = tool_plan([WEATHER, TIME], choice)
    c = plan.constraint
    assert not plan.forced
    assert c is not None and c.kind == "tool_calls" and c.lazy and c.best_effort
    assert c.names == {"get_weather", "get_time"}
    # lazy: the schema is one call object, held from where the model begins it
    assert _valid(c.schema, _call("get_weather", city="Oslo"))
    assert not _valid(c.schema, _call("get_weather", city=3))


def test_auto_with_a_strict_tool_is_enforced() -> None:
    strict = replace(TIME, strict=True)
    c = tool_plan([WEATHER, strict], ToolChoice("auto")).constraint
    assert c is not None and c.lazy and not c.best_effort
