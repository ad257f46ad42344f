"""Tool-call formats, one per model family, chosen from the chat template, and where a call
begins in each (`CallTrigger`, for the engine to constrain the call from there).

Formats (what the model writes before its calls):
- hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen 2/2.5/3, and
  lokal's generic tool prompt for templates that know no tools);
- llama3: `<|python_tag|>` or a bare `{"name": ..., "parameters": {...}}`, calls split by `;`;
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`;
- json: the whole output is calls, one object or a list (a forced call: tool_choice required or
  a named function, whose constraint makes the output exactly that).

Whatever the format, a reply that opens with a call object to an offered tool, bare, in a
markdown fence (```json) or in a list, is calls too: the forms small models write.
The parser (backends/tool_calls.py) reads calls by the same rules, so that text, calls and
the engine's lazy grammar agree.
"""

from __future__ import annotations

import json
import re
from typing import Literal

ModelFormat = Literal["hermes", "llama3", "mistral"]
ToolFormat = Literal["hermes", "llama3", "mistral", "json"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
"""The hermes markers, which lokal's generic tool prompt teaches too (backends/tools.py)."""

OPENERS: dict[ToolFormat, tuple[str, ...]] = {
    "hermes": (TOOL_CALL_OPEN,),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]",),
    "json": (),
}
# Between calls: separators, list brackets, markdown fences, and the wrappers of the formats
# above. Markers before single characters: an alternation takes its first match.
BETWEEN = re.compile(r"(?:\[TOOL_CALLS\]|</?tool_call>|<\|python_tag\|>|<\|eom_id\|>|"
                      r"<\|eot_id\|>|```[\w+-]*|\s|[\[\],;])*")
CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*'
                       r'"(?:arguments|parameters)"\s*:\s*')
# A call object's first key and its name: where a call to an offered tool is known to begin.
_NAME = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS_FIRST = re.compile(r'\{\s*"(?:arguments|parameters)"\s*:')


def _prefixes(word: str) -> str:
    """A regex matching every prefix of `word` (empty included)."""
    out = ""
    for ch in reversed(word):
        out = f"(?:{re.escape(ch)}{out})?"
    return out


# Every proper beginning of the heads above: while a reply is one of these, it may still
# become a call. The names' text is capped (a hostile name string cannot be held forever).
_GROWING = re.compile(
    r'\{\s*(?:"(?:' + _prefixes('name"') + r'|' + _prefixes('arguments"') + r'|'
    + _prefixes('parameters"') + r')|"name"\s*(?::\s*(?:"(?:[^"\\]|\\.){0,256}\\?)?)?)?')
_MARKERS = ("```", "<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
HEAD_LIMIT = 512
"""Characters a reply may hold back while it could still be a bare call's beginning."""

Head = Literal["call", "late", "wait", "no"]


def bare_head(text: str, known: frozenset[str]) -> tuple[Head, int]:
    """Whether `text`, the start of a reply (or what followed a call), begins a bare call:
    "call" (an object whose "name" is an offered tool starts at the offset returned), "late"
    (an object with its arguments first: only the whole reply can tell), "wait" (it may still
    become either) or "no"."""
    lead = BETWEEN.match(text)
    start = lead.end() if lead else 0
    rest = text[start:]
    if not rest or any(m.startswith(rest) and m != rest for m in _MARKERS):
        return ("wait" if len(text) <= HEAD_LIMIT else "no"), start
    if not rest.startswith("{"):
        return "no", start
    name = _NAME.match(rest)
    if name is not None:
        try:
            called = json.loads(f'"{name.group(1)}"')
        except json.JSONDecodeError:
            return "no", start
        return ("call" if called in known else "no"), start
    if _ARGS_FIRST.match(rest):
        return "late", start
    if _GROWING.fullmatch(rest) and len(text) <= HEAD_LIMIT:
        return "wait", start
    return "no", start


class CallTrigger:
    """Where, in the text a model generates, a tool call begins: the format's opener, or a
    bare call object (as `bare_head` finds them) at the reply's start or right after a call.
    `feed(text)` returns the call's text so far once one began (after the opener, or from the
    object's `{`), then nothing until `closed()` says the call ended."""

    def __init__(self, fmt: ModelFormat, known: frozenset[str]) -> None:
        self._openers = OPENERS[fmt]
        self._known = known
        self._text = ""
        self._at_start = True
        self._in_call = False

    def feed(self, text: str) -> str | None:
        if self._in_call or not text:
            return None
        searched = len(self._text)
        self._text += text
        for opener in self._openers:
            at = self._text.find(opener, max(0, searched - len(opener) + 1))
            if at != -1:
                return self._begin(self._text[at + len(opener):])
        if self._at_start:
            head, start = bare_head(self._text, self._known)
            if head == "call":
                return self._begin(self._text[start:])
            self._at_start = head == "wait"
        if not self._at_start:  # only an opener can begin a call now: keep what could be one
            keep = max((len(o) for o in self._openers), default=1) - 1
            self._text = self._text[-keep:] if keep else ""
        return None

    def _begin(self, call: str) -> str:
        self._in_call = True
        self._text = ""
        return call

    def closed(self) -> None:
        """The call ended: another may follow, after separators only or after an opener."""
        self._in_call = False
        self._at_start = True


def format_for_template(template: str | None) -> ModelFormat:
    """The tool-call format a chat template teaches its model; hermes (lokal's generic prompt
    uses it too) when the template says nothing about tools."""
    text = template or ""
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if "<|python_tag|>" in text or "ipython" in text:
        return "llama3"
    return "hermes"
