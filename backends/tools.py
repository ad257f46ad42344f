"""Tool calling for any chat template: lokal's generic tool prompt, the history rewrite for
templates that know no tools, and the JSON schema that forces a well-formed tool call."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lokal.backends.base import ChatMessage
from lokal.backends.tool_formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

GENERIC_TOOL_PROMPT = """You can call functions to help answer. The available functions, \
as JSON schemas:
{functions}
To call a function, reply with only this, once per call:
<tool_call>{{"name": "<function name>", "arguments": <arguments as a JSON object>}}</tool_call>
Otherwise, answer normally."""


def function_of(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    function = tool.get("function", tool)
    assert isinstance(function, Mapping)
    return function


def generic_tool_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for tool in tools:
        function = function_of(tool)
        lines.append(json.dumps({
            "name": function["name"],
            "description": function.get("description") or "",
            "parameters": function.get("parameters") or {"type": "object", "properties": {}},
        }, ensure_ascii=False))
    return GENERIC_TOOL_PROMPT.format(functions="\n".join(lines))


def _call_text(call: Mapping[str, Any]) -> str:
    function = call.get("function", {})
    args = function.get("arguments", "{}")
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        parsed = args
    body = json.dumps({"name": function.get("name"), "arguments": parsed}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def rewrite_for_generic(
    messages: Sequence[ChatMessage], tools: Sequence[Mapping[str, Any]]
) -> list[ChatMessage]:
    """Messages a tool-unaware template can render: the tool prompt joins the system message,
    assistant tool calls become <tool_call> text, tool results become user turns."""
    out: list[ChatMessage] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            text = "".join(_call_text(c) for c in m.tool_calls)
            out.append(ChatMessage("assistant", (m.content or "") + text))
        elif m.role == "tool":
            label = f' id="{m.tool_call_id}"' if m.tool_call_id else ""
            out.append(ChatMessage("user", f"<tool_response{label}>\n{m.content or ''}\n"
                                           "</tool_response>"))
        else:
            out.append(m)
    if tools:
        prompt = generic_tool_prompt(tools)
        if out and out[0].role in ("system", "developer"):
            first = out[0]
            out[0] = ChatMessage(first.role, f"{first.content or ''}\n\n{prompt}".strip())
        else:
            out.insert(0, ChatMessage("system", prompt))
    return out


def tool_call_schema(
    tools: Sequence[Mapping[str, Any]], *, only: str | None = None, parallel: bool = True
) -> dict[str, Any]:
    """JSON schema of the output when a tool call is required (or one function is named):
    one call object, or with `parallel` a non-empty array of them."""
    calls = []
    for tool in tools:
        function = function_of(tool)
        if only is not None and function["name"] != only:
            continue
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        calls.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if parallel:
        return {"type": "array", "items": one, "minItems": 1}
    return one
