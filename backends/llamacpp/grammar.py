"""JSON schema -> GBNF for llama.cpp's grammar sampler, refusing what the conversion would drop."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from backends.base import Constraint
from backends.errors import InvalidParameter

# What llama.cpp's converter turns into grammar rules. Anything else would be silently
# unenforced, so it is refused by name instead.
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minLength", "maxLength",
}
ANNOTATIONS = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly",
}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def _refuse(keyword: str, where: str, why: str = "") -> InvalidParameter:
    return InvalidParameter(
        f"JSON schema keyword '{keyword}' at {where or '/'} cannot be enforced by the llama.cpp "
        f"backend{': ' + why if why else ''}; remove it or use a supported equivalent.",
        param="response_format",
    )


def check_enforceable(schema: Any, where: str = "") -> None:
    """Raise InvalidParameter naming the first keyword the grammar would not enforce."""
    if isinstance(schema, bool):
        if schema is False:
            raise _refuse("false", where, "a schema that accepts nothing")
        return
    if not isinstance(schema, Mapping):
        raise InvalidParameter(f"JSON schema at {where or '/'} must be an object",
                               param="response_format")
    for key in schema:
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise _refuse(str(key), where)
    kinds = schema.get("type")
    if isinstance(kinds, list):
        if not all(k in TYPES for k in kinds):
            raise _refuse("type", where, f"unknown type in {kinds}")
        extra = set(schema) - {"type"} - ANNOTATIONS
        if len(kinds) > 1 and extra:
            raise _refuse(sorted(extra)[0], where, "combined with a list of types")
    elif kinds is not None and kinds not in TYPES:
        raise _refuse("type", where, f"unknown type {kinds!r}")
    fmt = schema.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _refuse("format", where, f"format {fmt!r} (supported: {sorted(FORMATS)})")
    if "pattern" in schema and ({"minLength", "maxLength", "format"} & set(schema)):
        raise _refuse("minLength/maxLength", where, "combined with pattern")
    if {"enum", "const"} & set(schema) and {"pattern", "minLength", "maxLength"} & set(schema):
        raise _refuse("pattern/minLength/maxLength", where, "combined with enum or const")
    properties = schema.get("properties") or {}
    missing = [r for r in schema.get("required", []) if r not in properties]
    if missing:
        raise _refuse("required", where, f"names {missing[0]!r}, which has no schema in "
                      "properties")
    for name, sub in properties.items():
        check_enforceable(sub, f"{where}/properties/{name}")
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        check_enforceable(additional, f"{where}/additionalProperties")
    items = schema.get("items")
    if isinstance(items, Mapping):
        check_enforceable(items, f"{where}/items")
    elif isinstance(items, list):
        for i, sub in enumerate(items):
            check_enforceable(sub, f"{where}/items/{i}")
    for i, sub in enumerate(schema.get("prefixItems") or []):
        check_enforceable(sub, f"{where}/prefixItems/{i}")
    for key in ("anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key) or []):
            check_enforceable(sub, f"{where}/{key}/{i}")
    for i, sub in enumerate(schema.get("allOf") or []):
        if isinstance(sub, Mapping) and set(sub) - {"properties", "required", "$ref", "anyOf",
                                                    "type", *ANNOTATIONS}:
            raise _refuse("allOf", where, "only object schemas can be merged")
        check_enforceable(sub, f"{where}/allOf/{i}")
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            check_enforceable(sub, f"{where}/{key}/{name}")


def constraint_grammar(constraint: Constraint) -> str:
    """The GBNF grammar (root rule `root`) that enforces `constraint`."""
    if constraint.kind == "grammar":
        if not constraint.grammar:
            raise InvalidParameter("empty grammar", param="grammar")
        return constraint.grammar
    if constraint.kind == "json_object":
        return JSON_GBNF
    param = "tools" if constraint.kind == "tool_calls" else "response_format"
    if constraint.schema is None:
        raise InvalidParameter("a JSON schema is required", param=param)
    try:
        check_enforceable(constraint.schema)
    except InvalidParameter as exc:
        raise InvalidParameter(exc.message, param=param) from None
    try:
        grammar = str(json_schema_to_gbnf(json.dumps(constraint.schema)))
    except (AssertionError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidParameter(f"the JSON schema could not be converted to a grammar: {exc}",
                               param=param) from exc
    # The converter's string characters admit raw control characters, which JSON forbids
    # inside strings (json.loads rejects them): narrow them as llama.cpp's JSON grammar does.
    return grammar.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
