"""Anthropic Messages requests -> engine-neutral GenerationRequests: content blocks as chat
messages, a final assistant message as a prefill the reply continues, tools through the shared
tool plan, and a 400 in Anthropic's terms for what lokal cannot honour."""

from __future__ import annotations

import json
from dataclasses import replace

from lokal.backends.base import ChatMessage, ChatPrompt, GenerationRequest, Tool, ToolCall
from lokal.server.doors.anthropic.wire import (
    ContentBlock,
    CountTokensRequest,
    CreateMessageRequest,
    MessageParam,
)
from lokal.server.doors.translate import ToolChoice, Translated, limited, sampling, tool_plan
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits

TEXT_ONLY = ("this model reads text only: image, document and other non-text content blocks "
             "cannot be honoured")


def _bad(message: str) -> APIError:
    return APIError(400, message)


def _text_of(blocks: str | list[ContentBlock] | None, where: str) -> str:
    """A string, or text blocks joined (what system and tool_result content may be)."""
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for i, block in enumerate(blocks):
        if block.type != "text" or block.text is None:
            raise _bad(f"{where}.{i}: content blocks of type '{block.type}' are not supported "
                       f"here; {TEXT_ONLY}")
        if not block.text:
            raise _bad(f"{where}.{i}: text content blocks must be non-empty")
        texts.append(block.text)
    return "".join(texts)


def tool_use_id(call_id: str) -> str:
    """Anthropic's id prefix for a call lokal's parser named `call_...`."""
    return "toolu_" + call_id.removeprefix("call_")


def _message(m: MessageParam, i: int) -> list[ChatMessage]:
    if isinstance(m.content, str):
        return [ChatMessage(m.role, m.content)]
    out: list[ChatMessage] = []
    texts: list[str] = []
    calls: list[ToolCall] = []

    def flush_text() -> None:
        if texts and m.role == "user":
            out.append(ChatMessage("user", "".join(texts)))
            texts.clear()

    for j, block in enumerate(m.content):
        where = f"messages.{i}.content.{j}"
        if block.type == "text":
            if not block.text:  # as Anthropic: an empty block is a client's bug, not a no-op
                raise _bad(f"{where}: text content blocks must be non-empty")
            texts.append(block.text)
        elif block.type == "tool_use" and m.role == "assistant":
            if not block.id or not block.name:
                raise _bad(f"{where}: a tool_use block needs 'id' and 'name'")
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input or {})))
        elif block.type == "tool_result" and m.role == "user":
            if not block.tool_use_id:
                raise _bad(f"{where}: a tool_result block needs 'tool_use_id'")
            flush_text()
            content = _text_of(block.content, f"{where}.content")
            if block.is_error:
                content = f"Error: {content}"
            out.append(ChatMessage("tool", content, tool_call_id=block.tool_use_id))
        elif block.type in ("image", "document", "search_result", "container_upload"):
            raise _bad(f"{where}: {TEXT_ONLY}")
        elif block.type in ("thinking", "redacted_thinking"):
            raise _bad(f"{where}: '{block.type}' blocks are not supported: this model does not "
                       "reason (extended thinking)")
        else:
            raise _bad(f"{where}: content blocks of type '{block.type}' are not supported in "
                       f"a {m.role} message")
    if m.role == "assistant":
        out.append(ChatMessage("assistant", "".join(texts) or None, tool_calls=tuple(calls)))
    else:
        flush_text()
    return out


def _check_prefill(final: ChatMessage, i: int) -> None:
    """A final assistant message is a prefill the reply continues: text only, as on Anthropic,
    and no trailing whitespace (a word's leading space belongs to its token, not the prefill's)."""
    if final.tool_calls:
        raise _bad(f"messages.{i}: a final assistant message with tool_use blocks cannot be "
                   "continued; send the tool_result blocks in a user message after it")
    text = final.content or ""
    if text != text.rstrip():
        raise _bad("messages: final assistant content cannot end with trailing whitespace")


def _check_thinking(body: CountTokensRequest) -> None:
    """Extended thinking's budget is a ceiling: a model that does not reason meets any budget
    with no thinking, so `thinking` is accepted (adaptive, or enabled with a budget Anthropic
    would take: at least 1024 tokens, less than max_tokens) and the reply has no thinking."""
    thinking = body.thinking
    if thinking is None or thinking.type != "enabled":
        return
    budget = thinking.budget_tokens
    if budget is None or budget < 1024:
        raise _bad("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if isinstance(body, CreateMessageRequest) and budget >= body.max_tokens:
        raise _bad("`max_tokens` must be greater than `thinking.budget_tokens`")


def translate(body: CountTokensRequest, request_id: str, limits: SchemaLimits) -> Translated:
    """The request as the engine's; sampling comes from CreateMessageRequest's fields."""
    _check_thinking(body)
    messages: list[ChatMessage] = []
    if body.system:
        messages.append(ChatMessage("system", _text_of(body.system, "system")))
    last = len(body.messages) - 1
    for i, m in enumerate(body.messages):
        if not m.content:
            if i == last and m.role == "assistant":
                continue  # an empty final assistant message prefills nothing, as on Anthropic
            raise _bad(f"messages.{i}: all messages must have non-empty content except for "
                       "the optional final assistant message")
        messages += _message(m, i)
    prefilled = bool(body.messages[last].content) and body.messages[last].role == "assistant"
    if prefilled:
        _check_prefill(messages[-1], last)
    tools = []
    left_out: dict[str, str] = {}  # name -> type
    for tool in body.tools or []:
        if tool.type not in (None, "custom"):  # Anthropic's own (server) tools: left out
            left_out[tool.name] = tool.type
            continue
        tools.append(Tool(tool.name, tool.description or None,
                          tool.input_schema or {"type": "object"}))
    choice = None
    parallel = True
    if body.tool_choice is not None:
        kind = body.tool_choice.type
        if kind == "tool" and not body.tool_choice.name:
            raise _bad("tool_choice: type 'tool' needs the 'name' of the tool")
        if kind == "tool" and body.tool_choice.name in left_out:
            raise _bad(f"tool_choice: '{body.tool_choice.name}' is one of Anthropic's server "
                       "tools, which lokal cannot run; it is left out of the request")
        choice = {"auto": ToolChoice("auto"), "none": ToolChoice("none"),
                  "any": ToolChoice("required"),
                  "tool": ToolChoice("required", body.tool_choice.name)}[kind]
        parallel = not body.tool_choice.disable_parallel_tool_use
        if kind in ("auto", "none") and not tools:
            choice = None  # Anthropic accepts these without tools
    plan = replace(tool_plan(tools, choice, parallel=parallel, param="tools",
                             schema_field="input_schema"), left_out=tuple(left_out.values()))
    wanted = sampling()
    if isinstance(body, CreateMessageRequest):
        wanted = sampling(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                          max_tokens=body.max_tokens, max_tokens_ceiling=True,
                          stop=body.stop_sequences)
    generation = GenerationRequest(
        request_id=request_id,
        prompt=ChatPrompt(tuple(messages), tools=plan.tools, continue_final=prefilled),
        sampling=wanted,
        constraint=limited(plan.constraint, limits),
    )
    return Translated(generation, plan)
