"""Validate wire shapes against OpenAI's official spec in ../shared/openai-openapi/."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[2] / "shared" / "openai-openapi" / "openapi.yaml"
BASE = "urn:openai-openapi"


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


@cache
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC.open(encoding="utf-8") as f:
        spec = yaml.load(f, Loader=loader)
    spec = _nullable_to_type(spec)
    return Registry().with_resource(BASE, DRAFT202012.create_resource(spec))


def validate(obj: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError if `obj` is not a valid `schema_name`."""
    validator = Draft202012Validator(
        {"$ref": f"{BASE}#/components/schemas/{schema_name}"}, registry=_registry()
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
