"""Responses API requests -> engine-neutral GenerationRequests: input items (stored in their
resource shape, with ids) -> chat messages, function tools and tool_choice -> a tool plan,
text.format -> a constraint, and the refusal of what lokal cannot honour."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Constraint,
    GenerationRequest,
    Tool,
    ToolCall,
)
from lokal.server.doors.responses.wire import ContentPart, CreateResponse, InputItem
from lokal.server.doors.translate import (
    ToolChoice,
    ToolPlan,
    Translated,
    constraint_of,
    output_constraint,
    sampling,
    tool_plan,
    unsupported,
)
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits

Item = dict[str, Any]
"""An input or output item in the shape the API returns it (ItemResource), with its id."""

TEXT_PARTS = frozenset({"input_text", "output_text"})
HOSTED_TOOLS = frozenset({"web_search", "web_search_preview", "web_search_preview_2025_03_11",
                          "file_search", "code_interpreter", "computer_use_preview", "mcp",
                          "image_generation", "local_shell"})
"""Tools OpenAI's servers run (web search, file search, code, computer use, remote MCP,
images, a shell): not offered to the model here, and named in the response's header."""
EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
SUMMARIES = frozenset({"auto", "concise", "detailed"})
HARMLESS_INCLUDES = frozenset({"reasoning.encrypted_content"})
"""A non-reasoning model makes no reasoning items, so there is nothing to encrypt: asking
for it (as Codex does) changes nothing. Every other `include` asks for data lokal lacks."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def refuse_unsupported(body: CreateResponse) -> None:
    """400 for every parameter whose value asks for something lokal cannot do; absent, or
    at the value that asks for nothing, each is accepted."""
    reasoning = body.reasoning
    if reasoning is not None:
        # A ceiling on reasoning, met with none by a model that does not reason: accepted, and
        # the usage says so (output_tokens_details.reasoning_tokens 0).
        for field, value, allowed in (("effort", reasoning.effort, EFFORTS),
                                      ("summary", reasoning.summary, SUMMARIES),
                                      ("generate_summary", reasoning.generate_summary,
                                       SUMMARIES)):
            if value is not None and value not in allowed:
                raise APIError(400, f"Invalid value for 'reasoning.{field}': {value!r}; "
                               f"expected one of {', '.join(sorted(allowed))}.",
                               param=f"reasoning.{field}", code="invalid_value")
    for i, entry in enumerate(body.include or ()):
        if entry not in HARMLESS_INCLUDES:
            raise unsupported(f"include[{i}]", f"lokal cannot include '{entry}'")
    if body.background:
        raise unsupported("background", "lokal runs responses in the foreground only")
    if body.top_logprobs:
        raise unsupported("top_logprobs", "log probabilities are not offered on Responses")
    if body.conversation is not None:
        raise unsupported("conversation", "use 'previous_response_id' to continue one")
    if body.prompt is not None:
        raise unsupported("prompt", "lokal has no stored prompt templates")
    if body.context_management:
        raise unsupported("context_management", "lokal does not compact context")
    if body.truncation == "auto":
        raise unsupported("truncation", "lokal never drops input; a prompt too long for "
                           "the context is a 400 ('disabled', the default)")
    if body.service_tier not in (None, "auto", "default"):
        raise unsupported("service_tier", "lokal has one service tier, 'default'")
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise unsupported("text.verbosity", "lokal's models have no verbosity control")


def _text(parts: str | list[ContentPart] | None, param: str, kinds: frozenset[str]) -> str:
    if parts is None:
        raise APIError(400, f"Missing required parameter: '{param}'.", param=param,
                       code="missing_required_parameter")
    if isinstance(parts, str):
        return parts
    texts = []
    for j, part in enumerate(parts):
        if part.type not in kinds or part.text is None:
            raise APIError(400, f"Content parts of type '{part.type}' are not supported by "
                           f"this model; only {', '.join(sorted(kinds))} parts are.",
                           param=f"{param}[{j}]", code="unsupported_content_type")
        texts.append(part.text)
    return "".join(texts)


def _required(value: str | None, param: str) -> str:
    if value is None:
        raise APIError(400, f"Missing required parameter: '{param}'.", param=param,
                       code="missing_required_parameter")
    return value


def input_items(body: CreateResponse) -> list[Item]:
    """`body.input` as stored items: each checked, with the id it is listed under."""
    raw = body.input
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_text", "text": raw}]}]
    return [_item(item, f"input[{i}]") for i, item in enumerate(raw)]


def _item(item: InputItem, where: str) -> Item:
    kind = item.type or "message"
    if kind == "message":
        role = item.role
        if role == "assistant":
            text = _text(item.content, f"{where}.content", TEXT_PARTS)
            return {"id": item.id or new_id("msg"), "type": "message", "role": "assistant",
                    "status": "completed", "content": [
                        {"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}
        if role not in ("user", "system", "developer"):
            raise APIError(400, f"Invalid value for '{where}.role': {role!r}; expected one of "
                           "user, system, developer, assistant.", param=f"{where}.role",
                           code="invalid_value")
        text = _text(item.content, f"{where}.content", TEXT_PARTS)
        return {"id": item.id or new_id("msg"), "type": "message", "role": role,
                "status": "completed", "content": [{"type": "input_text", "text": text}]}
    if kind == "function_call":
        return {"id": item.id or new_id("fc"), "type": "function_call",
                "status": "completed",
                "call_id": _required(item.call_id, f"{where}.call_id"),
                "name": _required(item.name, f"{where}.name"),
                "arguments": _required(item.arguments, f"{where}.arguments")}
    if kind == "function_call_output":
        return {"id": item.id or new_id("fco"), "type": "function_call_output",
                "status": "completed",
                "call_id": _required(item.call_id, f"{where}.call_id"),
                "output": _text(item.output, f"{where}.output", frozenset({"input_text"}))}
    raise APIError(400, f"Input items of type '{kind}' are not supported: lokal serves "
                   "messages, function_call and function_call_output items.",
                   param=f"{where}.type", code="unsupported_value")


def chat_messages(items: Sequence[Item]) -> list[ChatMessage]:
    """Stored items as a chat: function calls join the assistant message before them (or
    start one), as chat templates expect; a call's output is a `tool` message naming it."""
    messages: list[ChatMessage] = []
    names: dict[str, str] = {}
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(part["text"] for part in item["content"])
            messages.append(ChatMessage(role=item["role"], content=text))
        elif kind == "function_call":
            if item.get("status") == "incomplete":
                continue  # cut by the token limit: never a call the model made
            names[item["call_id"]] = item["name"]
            call = ToolCall(item["call_id"], item["name"], item["arguments"])
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = ChatMessage("assistant", last.content,
                                           tool_calls=(*last.tool_calls, call))
            else:
                messages.append(ChatMessage("assistant", None, tool_calls=(call,)))
        elif kind == "function_call_output":
            messages.append(ChatMessage("tool", item["output"], name=names.get(item["call_id"]),
                                        tool_call_id=item["call_id"]))
    return messages


def plan_tools(body: CreateResponse) -> ToolPlan:
    tools: list[Tool] = []
    left_out: list[str] = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type in HOSTED_TOOLS:  # OpenAI runs these itself; lokal cannot
            left_out.append(tool.type)
            continue
        if tool.type != "function":
            raise unsupported(f"tools[{i}].type", f"lokal serves only function tools, not "
                               f"'{tool.type}'")
        if tool.name is None:
            raise APIError(400, f"Missing required parameter: 'tools[{i}].name'.",
                           param=f"tools[{i}].name", code="missing_required_parameter")
        tools.append(Tool(tool.name, tool.description, tool.parameters, tool.strict))
    raw = body.tool_choice
    choice: ToolChoice | None
    if raw is None or (not tools and raw in ("auto", "none")):
        choice = None  # Responses clients send "auto" with no tools; nothing to choose from
    elif isinstance(raw, str):
        choice = ToolChoice(raw)
    elif raw.type == "function" and raw.name:
        choice = ToolChoice("required", raw.name)
    else:
        raise unsupported("tool_choice", f"lokal offers 'none', 'auto', 'required' and "
                           f"{{'type': 'function', 'name': ...}}, not type '{raw.type}'")
    plan = tool_plan(tools, choice, parallel=body.parallel_tool_calls is not False,
                     schema_field="parameters")
    return replace(plan, left_out=tuple(left_out))


def _text_format(body: CreateResponse, limits: SchemaLimits) -> Constraint | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return output_constraint("json_object", None, "text.format", limits)
    for field, value in (("name", fmt.name), ("schema", fmt.schema_)):
        if value is None:
            raise APIError(400, f"Missing required parameter: 'text.format.{field}'.",
                           param=f"text.format.{field}", code="missing_required_parameter")
    return output_constraint("json_schema", fmt.schema_, "text.format.schema", limits)


def response_request(body: CreateResponse, history: Sequence[Item], request_id: str,
                     limits: SchemaLimits) -> tuple[Translated, list[Item]]:
    """The generation for `body`, after the `history` its previous_response_id chain holds,
    and this request's own input items, as stored; `instructions` lead as a system message
    (never carried over from earlier responses)."""
    refuse_unsupported(body)
    items = input_items(body)
    plan = plan_tools(body)
    fmt = body.text.format if body.text is not None else None
    constraint = constraint_of(plan, fmt is not None and fmt.type != "text",
                               lambda: _text_format(body, limits), "text.format", limits)
    messages = chat_messages([*history, *items])
    if body.instructions:
        messages.insert(0, ChatMessage("system", body.instructions))
    if not messages:
        raise APIError(400, "Missing required parameter: 'input'.", param="input",
                       code="missing_required_parameter")
    generation = GenerationRequest(
        request_id=request_id, prompt=ChatPrompt(tuple(messages), tools=plan.tools),
        sampling=sampling(temperature=body.temperature, top_p=body.top_p,
                          max_tokens=body.max_output_tokens, max_tokens_ceiling=True),
        constraint=constraint)
    return Translated(generation, plan), items


def echo(body: CreateResponse) -> dict[str, Any]:
    """The request's settings as a Response object repeats them."""
    fmt: dict[str, Any] = {"type": "text"}
    if body.text is not None and body.text.format is not None:
        given = body.text.format
        fmt = {"type": given.type}
        if given.type == "json_schema":
            fmt.update(name=given.name, schema=given.schema_, strict=given.strict)
            if given.description is not None:
                fmt["description"] = given.description
    tools = [{"type": "function", "name": t.name, "description": t.description,
              "parameters": t.parameters, "strict": t.strict} if t.type == "function"
             else {"type": t.type} for t in body.tools or ()]
    choice = body.tool_choice
    out: dict[str, Any] = {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": body.reasoning.summary if body.reasoning else None},
        "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": fmt, "verbosity": "medium"},
        "tool_choice": choice.model_dump(exclude_none=True)
        if choice is not None and not isinstance(choice, str) else choice or "auto",
        "tools": tools,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": "disabled",
        "metadata": body.metadata or {},
        "background": False,
        "service_tier": "default",
    }
    for key in ("user", "safety_identifier", "prompt_cache_key"):
        if getattr(body, key) is not None:
            out[key] = getattr(body, key)
    return out
