"""JSON schemas as lokal enforces them, on every engine: objects that declare their properties
and say nothing of others are closed, unbounded integers are held to the safe range, and
whitespace between JSON tokens is bounded.

JSON Schema leaves such an object open; a small model then fills it with invented keys until
max_tokens ends the reply. llama.cpp's converter and XGrammar's strict mode close it too.
Closing only ever narrows a schema: whatever the closed schema admits, the sent one admits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JSON_WHITESPACE = r"[\x20\x0A]?"
"""Between JSON tokens: one space or newline at most (a model cannot spend its tokens on
blank lines inside a constrained value)."""
CALL_WHITESPACE = r"(?:\x20|\x0A\x20{0,16})?"
"""Inside a tool call a model began itself: also a newline's indentation, as small models
pretty-print the calls they write in fences."""

SAFE_INTEGER = 2**53 - 1

# Keywords that say something about keys beyond `properties`: an object using any of them (or
# whose combined branches do) is left as it is.
_OPEN_KEYWORDS = ("additionalProperties", "patternProperties", "unevaluatedProperties",
                  "minProperties")
# Where a narrower subschema narrows the whole: closing inside these is sound.
_SUBSCHEMA = ("items", "additionalItems", "contains", "then", "else", "propertyNames")
_SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")
_MAX_BRANCHES = 256


def _resolve(root: Any, ref: Any) -> Any:
    """The subschema a local `$ref` points at, or None (remote, or not found)."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:] if ref != "#" else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _branches(root: Any, node: Mapping[str, Any]) -> list[Any]:
    """The subschemas whose keys an object at `node` must also admit: its allOf, anyOf and
    oneOf branches and its `$ref` target, followed through refs and nested allOf (each
    subschema once: a hostile schema's ref cycles end)."""
    found: list[Any] = []
    seen: set[int] = set()
    todo: list[tuple[Mapping[str, Any], tuple[str, ...]]] = [
        (node, ("$ref", "allOf", "anyOf", "oneOf"))]
    while todo and len(found) < _MAX_BRANCHES:
        current, keywords = todo.pop()
        direct: list[Any] = []
        if "$ref" in keywords and "$ref" in current:
            direct.append(_resolve(root, current["$ref"]))
        for keyword in keywords[1:]:
            value = current.get(keyword)
            if isinstance(value, list):
                direct += value
        for branch in direct:
            if isinstance(branch, Mapping) and "$ref" in branch and "properties" not in branch:
                target = _resolve(root, branch["$ref"])
                branch = target if isinstance(target, Mapping) else branch
            if id(branch) in seen:
                continue
            seen.add(id(branch))
            found.append(branch)
            if isinstance(branch, Mapping):
                todo.append((branch, ("$ref", "allOf")))
    return found


def _is_union(node: Mapping[str, Any]) -> bool:
    """Whether `node` is an object closed over its own names and its branches' (it declares
    properties, or its allOf branches do)."""
    if any(k in node for k in _OPEN_KEYWORDS):
        return False
    if isinstance(node.get("properties"), Mapping):
        return True
    all_of = node.get("allOf")
    return isinstance(all_of, list) and any(
        isinstance(b, Mapping) and ("properties" in b or "$ref" in b) for b in all_of)


def _part_refs(schema: Any) -> set[str]:
    """The `$ref`s that point at parts of a larger object (allOf branches, and the branches
    and sibling `$ref` of an object closed over them): their targets stay open themselves."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            keywords = ("allOf", "anyOf", "oneOf") if _is_union(node) else ("allOf",)
            for keyword in keywords:
                branches = node.get(keyword)
                for branch in branches if isinstance(branches, list) else ():
                    if isinstance(branch, Mapping) and isinstance(branch.get("$ref"), str):
                        found.add(branch["$ref"])
            if isinstance(node.get("$ref"), str) and _is_union(node):
                found.add(node["$ref"])
            stack.extend(v for k, v in node.items() if k not in ("enum", "const", "default",
                                                                  "examples"))
        elif isinstance(node, list):
            stack.extend(node)
    return found


def closed(schema: Any) -> Any:
    """A copy of `schema` with every object that declares `properties` and nothing about other
    keys enforced as closed (`additionalProperties: false`).

    - `additionalProperties` (true or a schema), `patternProperties`, `unevaluatedProperties`
      or `minProperties` leave an object as sent.
    - An object whose allOf / anyOf / oneOf branches or `$ref` also declare properties is closed
      once, over all their names; the branches themselves stay open (closing each branch of an
      allOf on its own would leave nothing valid).
    - Nothing under `not`, `if` or `dependencies` changes: narrowing there widens the whole.
    - An object with no `properties` (`{"type": "object"}`) stays any object.
    - An integer with no bound on a side is held within JavaScript's safe integers there.
    """
    part_ids = {id(_resolve(schema, ref)) for ref in _part_refs(schema)} - {id(None)}
    return _close(schema, schema, part_ids, open_here=False)


def _close(root: Any, node: Any, parts: set[int], *, open_here: bool) -> Any:
    if isinstance(node, list):
        return [_close(root, item, parts, open_here=False) for item in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    own_open = open_here or id(node) in parts
    union = not own_open and _is_union(node)
    for key, value in node.items():
        if key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {name: _close(root, sub, parts, open_here=False)
                        for name, sub in value.items()}
        elif key in _SUBSCHEMA or key == "additionalProperties":
            out[key] = _close(root, value, parts, open_here=False)
        elif key == "allOf" and isinstance(value, list):
            out[key] = [_close(root, item, parts, open_here=True) for item in value]
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            # Branches of an object that is closed over their names stay open themselves.
            out[key] = [_close(root, item, parts, open_here=union) for item in value]
        else:
            out[key] = value  # not, if, dependencies, enum, const, ...: as sent
    if union:
        _close_over_branches(root, node, out)
    kind = node.get("type")
    if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
        # Unbounded digits are where a small model rambles ("offset": 10000000000...): hold
        # integers to the range every JSON parser keeps exact (JavaScript's safe integers).
        if "minimum" not in node and "exclusiveMinimum" not in node:
            out["minimum"] = -SAFE_INTEGER
        if "maximum" not in node and "exclusiveMaximum" not in node:
            out["maximum"] = SAFE_INTEGER
    return out


def _close_over_branches(root: Any, node: Mapping[str, Any], out: dict[str, Any]) -> None:
    """Close `out` over its own names and its branches', unless something keeps it open."""
    own = node.get("properties")
    names: list[str] = [*(own if isinstance(own, Mapping) else ()), *_names(node)]
    for branch in _branches(root, node):
        if not isinstance(branch, Mapping):
            continue
        if any(k in branch for k in _OPEN_KEYWORDS):
            return
        props = branch.get("properties")
        names += [*props] if isinstance(props, Mapping) else []
        names += _names(branch)
    properties = dict(out.get("properties") or {})
    for name in names:
        properties.setdefault(name, {})
    out["properties"] = properties
    out["additionalProperties"] = False


def _names(node: Mapping[str, Any]) -> list[str]:
    """Keys a schema requires: they must stay allowed once it is closed."""
    required = node.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    dependent = node.get("dependentRequired")
    if isinstance(dependent, Mapping):
        names += [n for value in dependent.values() if isinstance(value, list)
                  for n in value if isinstance(n, str)]
    return names
