"""Schemas as lokal enforces them: objects that declare their properties are closed, without
ever rejecting what the sent schema admits, and unbounded integers held to the safe range."""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import pytest

from lokal.backends.json_schema import SAFE_INTEGER, closed

WEATHER = {"type": "object", "required": ["city"],
           "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}


def admits(schema: Any, value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_an_object_with_properties_is_closed_at_every_depth() -> None:
    nested = {"type": "object", "properties": {
        "place": WEATHER, "history": {"type": "array", "items": WEATHER},
        "either": {"anyOf": [WEATHER, {"type": "null"}]}}, "$defs": {"w": WEATHER}}
    out = closed(nested)
    assert out["additionalProperties"] is False
    for sub in (out["properties"]["place"], out["properties"]["history"]["items"],
                out["properties"]["either"]["anyOf"][0], out["$defs"]["w"]):
        assert sub["additionalProperties"] is False
    assert not admits(out, {"place": {"city": "Paris", "temperature": 21}})
    assert admits(out, {"place": {"city": "Paris", "unit": "c"}})
    assert "additionalProperties" not in nested  # the request's own schema is left alone


@pytest.mark.parametrize("opened", [
    {"additionalProperties": True}, {"additionalProperties": {"type": "string"}},
    {"patternProperties": {"^x-": {}}}, {"unevaluatedProperties": True},
    {"minProperties": 2},
])
def test_an_object_that_says_anything_of_other_keys_is_left_as_sent(opened: Any) -> None:
    schema = {**WEATHER, **opened}
    assert closed(schema) == schema


def test_an_object_without_properties_stays_any_object() -> None:
    assert closed({"type": "object"}) == {"type": "object"}
    assert closed({"type": "object", "properties": {}}) == {
        "type": "object", "properties": {}, "additionalProperties": False}


def test_allof_branches_are_merged_not_closed_one_by_one() -> None:
    split = {"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}
    out = closed(split)
    both = {"a": 1, "b": "x"}
    assert admits(split, both) and admits(out, both)  # still satisfiable
    assert not admits(out, {**both, "c": 0})
    assert all("additionalProperties" not in branch for branch in out["allOf"])


def test_refs_that_are_parts_of_an_object_stay_open_and_the_whole_is_closed() -> None:
    schema = {"type": "object", "properties": {"child": {
        "allOf": [{"$ref": "#/$defs/Base"}], "properties": {"extra": {"type": "integer"}}}},
        "$defs": {"Base": {"type": "object", "properties": {"id": {"type": "string"}},
                           "required": ["id"]}}}
    out = closed(schema)
    assert "additionalProperties" not in out["$defs"]["Base"]
    child = out["properties"]["child"]
    assert child["additionalProperties"] is False and set(child["properties"]) == {"extra",
                                                                                   "id"}
    assert admits(out, {"child": {"id": "x", "extra": 1}})
    assert not admits(out, {"child": {"id": "x", "other": 1}})


def test_required_keys_the_properties_do_not_list_stay_allowed() -> None:
    out = closed({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]})
    assert admits(out, {"a": 1, "b": 2}) and not admits(out, {"a": 1, "b": 2, "c": 3})


def test_nothing_under_not_or_if_is_narrowed() -> None:
    schema = {"type": "object", "properties": {"a": {}},
              "not": {"type": "object", "properties": {"a": {"const": 1}}},
              "if": {"properties": {"a": {"const": 2}}}, "then": {"required": ["a"]}}
    out = closed(schema)
    assert out["not"] == schema["not"] and out["if"] == schema["if"]


def test_unbounded_integers_are_held_to_the_safe_range() -> None:
    out = closed({"type": "object", "properties": {
        "n": {"type": "integer"}, "m": {"type": ["integer", "null"], "minimum": 0},
        "x": {"type": "number"}}})
    n, m = out["properties"]["n"], out["properties"]["m"]
    assert (n["minimum"], n["maximum"]) == (-SAFE_INTEGER, SAFE_INTEGER)
    assert (m["minimum"], m["maximum"]) == (0, SAFE_INTEGER)
    assert "maximum" not in out["properties"]["x"]


# Whatever the closed schema admits, the sent one admits (closing only narrows).
SCHEMAS: list[Any] = [
    WEATHER,
    {"type": "object", "properties": {"p": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "cat"}}, "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "dog"}}, "required": ["kind"]}]}}},
    {"allOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}],
     "$defs": {"A": {"properties": {"a": {"type": "integer"}}},
               "B": {"properties": {"b": {"type": "integer"}}}}},
    {"type": "object", "properties": {"a": {"type": "integer"}},
     "anyOf": [{"properties": {"b": {}}, "required": ["b"]}, {"required": ["a"]}]},
]
VALUES: list[Any] = [{}, {"city": "x"}, {"city": "x", "z": 1}, {"p": {"kind": "cat"}},
                     {"p": {"kind": "dog", "z": 1}}, {"a": 1}, {"a": 1, "b": 2},
                     {"b": 2, "c": 3}, {"a": "no"}, [], 3]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_closing_never_admits_what_the_sent_schema_rejects(schema: Any) -> None:
    out = closed(schema)
    for value in VALUES:
        if admits(out, value):
            assert admits(schema, value), (value, out)


def test_a_hostile_ref_cycle_ends_at_once() -> None:
    cycle = {"$defs": {"A": {"allOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/A"}],
                             "properties": {"a": {}}}}, "$ref": "#/$defs/A"}
    started = time.perf_counter()
    closed(cycle)
    assert time.perf_counter() - started < 1.0
