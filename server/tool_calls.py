"""Turns generated text into OpenAI tool calls, streaming content until a call begins."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from backends.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from server.protocol.chat import ToolCallWire

_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)",
                    re.DOTALL)


def _as_calls(value: Any, known: frozenset[str]) -> list[ToolCallWire] | None:
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCallWire] = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in known:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if not isinstance(args, dict):
            return None
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": item["name"],
                                   "arguments": json.dumps(args, ensure_ascii=False)}})
    return calls or None


def _complete_items(body: str) -> list[Any]:
    """The elements of a JSON array that were written out whole before `body` was cut short
    (a forced list of calls stopped by max_tokens): `[{...}, {...}, {"na` gives the first two."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    at = body.find("[") + 1
    if at == 0:
        return items
    while True:
        while at < len(body) and body[at] in " \t\r\n,":
            at += 1
        try:
            item, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return items
        items.append(item)


def parse_tool_calls(text: str, known: frozenset[str],
                     partial: bool = False) -> list[ToolCallWire] | None:
    """Tool calls in `text` (<tool_call> blocks, or bare JSON), or None if it holds none. With
    `partial` (the output was cut by max_tokens), a JSON array cut short yields the calls that
    were complete."""
    body = text.strip()
    if partial and body.startswith("["):
        try:
            json.loads(body)
        except json.JSONDecodeError:
            return _as_calls(_complete_items(body), known)
    if TOOL_CALL_OPEN in body:
        calls: list[ToolCallWire] = []
        for block in _BLOCK.findall(body):
            try:
                parsed = _as_calls(json.loads(block), known)
            except json.JSONDecodeError:
                return None
            if parsed is None:
                return None
            calls += parsed
        return calls or None
    try:
        return _as_calls(json.loads(body), known)
    except json.JSONDecodeError:
        return None


class ToolCallStream:
    """Per choice: `feed` returns the content safe to show now; `finish` returns the rest of
    the content and the tool calls. Forced calls (required / named function) are all call."""

    def __init__(self, known: frozenset[str], forced: bool) -> None:
        self._known = known
        self._forced = forced
        self._held = ""
        self._holding = forced
        self._shown = ""

    def feed(self, text: str) -> str:
        if self._holding:
            self._held += text
            return ""
        pending = self._held + text
        if not (self._shown + pending).strip():
            self._held = pending
            return ""
        if not self._shown.strip() and pending.lstrip().startswith("{"):
            self._holding, self._held = True, pending
            return ""
        at = pending.find(TOOL_CALL_OPEN)
        if at != -1:
            self._holding, self._held = True, pending[at:]
            return self._show(pending[:at])
        keep = 0
        for size in range(min(len(TOOL_CALL_OPEN) - 1, len(pending)), 0, -1):
            if pending.endswith(TOOL_CALL_OPEN[:size]):
                keep = size
                break
        self._held = pending[len(pending) - keep:] if keep else ""
        return self._show(pending[:len(pending) - keep])

    def _show(self, text: str) -> str:
        self._shown += text
        return text

    def finish(self, cut: bool = False) -> tuple[str, list[ToolCallWire]]:
        """The rest of the content and the calls; `cut`: max_tokens ended the output, so the
        calls that were complete are kept (a forced list of calls the model kept adding to)."""
        held, self._held = self._held, ""
        calls = parse_tool_calls(held, self._known, partial=cut and self._forced) \
            if self._holding else None
        if calls:
            return "", calls
        return self._show(held), []

    @property
    def content(self) -> str:
        return self._shown
