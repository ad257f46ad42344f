"""Tool calling for any chat template: lokal's generic tool prompt, the history rewrite for
templates that know no tools, and the JSON schema that forces a well-formed tool call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lokal.backends.base import ChatMessage, Tool, ToolCall
from lokal.backends.tool_formats import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

GENERIC_TOOL_PROMPT = """You can call functions to help answer. The available functions, \
as JSON schemas:
{functions}
To call a function, reply with only this, once per call:
<tool_call>{{"name": "<function name>", "arguments": <arguments as a JSON object>}}</tool_call>
Otherwise, answer normally."""


def _any_object() -> dict[str, Any]:
    """The arguments' schema of a tool that gives none (a new dict: callers may change it)."""
    return {"type": "object", "properties": {}}


def generic_tool_prompt(tools: Sequence[Tool]) -> str:
    lines = [json.dumps({"name": tool.name, "description": tool.description or "",
                         "parameters": tool.parameters or _any_object()}, ensure_ascii=False)
             for tool in tools]
    return GENERIC_TOOL_PROMPT.format(functions="\n".join(lines))


def _call_text(call: ToolCall) -> str:
    try:
        parsed = json.loads(call.arguments)
    except json.JSONDecodeError:
        parsed = call.arguments
    body = json.dumps({"name": call.name, "arguments": parsed}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def rewrite_for_generic(messages: Sequence[ChatMessage],
                        tools: Sequence[Tool]) -> list[ChatMessage]:
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
    tools: Sequence[Tool], *, only: str | None = None, parallel: bool = True
) -> dict[str, Any]:
    """JSON schema of the output when a tool call is required (or one function is named):
    one call object, or with `parallel` a non-empty array of them."""
    calls = [{
        "type": "object",
        "properties": {"name": {"const": tool.name},
                       "arguments": tool.parameters or _any_object()},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for tool in tools if only is None or tool.name == only]
    one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if parallel:
        return {"type": "array", "items": one, "minItems": 1}
    return one
