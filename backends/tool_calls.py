"""One incremental parser of tool calls, whatever the model's format (backends/tool_formats.py):
content streams until a call begins, then each call's name as soon as it is known and its
arguments as they are generated."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from lokal.backends.base import ChatPrompt, GenerationRequest, ToolCall
from lokal.backends.tool_formats import (
    BETWEEN,
    CALL_HEAD,
    OPENERS,
    ToolFormat,
    bare_head,
)


@dataclass(frozen=True, slots=True)
class CallStart:
    """A call's name is known: the stream can announce it."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    """The next piece of a call's arguments, as generated (they concatenate to its JSON)."""

    index: int
    text: str


Event = str | CallStart | CallArguments
"""A str is content."""


@dataclass
class _Object:
    """One call object being read: its name (once known) and how far its arguments got."""

    text: str = ""
    name: str | None = None
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    args_from: int = -1
    args_to: int = -1
    """End of the arguments value, once it closed; -1 while it is open."""
    sent: int = 0
    """Characters of the arguments already handed out."""


def _value_end(text: str, start: int) -> int:
    """Where the JSON value starting at `start` ends (exclusive), or -1 while it is open."""
    depth = 0
    in_string = escaped = False
    for at in range(start, len(text)):
        ch = text[at]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return at + 1
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return at + 1
        elif depth == 0 and ch in ",}":
            return at
    return -1


class ToolCallParser:
    """Per choice: `feed(text)` returns the events that text completes; `finish(cut)` the rest
    and the calls that were complete. `forced`: the output is calls from its first character."""

    def __init__(self, fmt: ToolFormat, known: frozenset[str], forced: bool) -> None:
        self._format: ToolFormat = "json" if forced else fmt
        self._known = known
        self._forced = forced
        self._openers = OPENERS[self._format]
        self._pending = ""
        self._in_calls = forced
        self._bare = not forced
        """Nothing shown yet: the reply may still open with a bare call."""
        self._shown = ""
        self._object: _Object | None = None
        self._calls: list[ToolCall] = []
        self._started = 0
        self._raw = ""
        """Everything fed since calls may have begun: content after all if none was a call."""

    # -- content --------------------------------------------------------------------------

    def _content(self, text: str) -> list[Event]:
        """Content up to where calls may begin; holds back what could still be an opener or a
        bare call at the reply's start."""
        pending = self._pending + text
        if self._bare:
            head, _ = bare_head(pending, self._known)
            if head == "wait":
                self._pending = pending
                return []
            if head != "no":
                self._in_calls, self._pending, self._raw = True, pending, pending
                return self._calls_from("")
            self._bare = False
        for opener in self._openers:
            at = pending.find(opener)
            if at != -1:
                shown = pending[:at]
                self._in_calls, self._pending = True, pending[at:]
                self._raw = self._pending
                return self._show(shown) + self._calls_from("")
        keep = 0
        for opener in self._openers:
            for size in range(min(len(opener) - 1, len(pending)), 0, -1):
                if pending.endswith(opener[:size]):
                    keep = max(keep, size)
                    break
        self._pending = pending[len(pending) - keep:] if keep else ""
        return self._show(pending[:len(pending) - keep])

    def _show(self, text: str) -> list[Event]:
        self._shown += text
        return [text] if text else []

    # -- calls ----------------------------------------------------------------------------

    def _calls_from(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while True:
            if self._object is None:
                skipped = BETWEEN.match(self._pending)
                rest = self._pending[skipped.end() if skipped else 0:]
                if not rest:
                    self._pending = ""
                    return events
                if not rest.startswith("{"):
                    return events  # not a call (yet): more text, or finish() decides
                self._object, self._pending = _Object(), ""
                self._object.text = rest
            else:
                self._object.text += self._pending
                self._pending = ""
            obj = self._object
            events += self._advance(obj)
            if obj.args_to == -1 or not self._object_closed(obj):
                return events
            self._pending = obj.text[self._close_at(obj):]
            self._object = None

    def _advance(self, obj: _Object) -> list[Event]:
        events: list[Event] = []
        if obj.name is None:
            head = CALL_HEAD.match(obj.text)
            if head is None:
                return events
            name = json.loads(f'"{head.group(1)}"')
            value = obj.text[head.end():].lstrip()
            if name not in self._known or not value.startswith("{"):
                # Never announced (an unknown tool, arguments that are no object, or not yet
                # known): finish() turns the held text into content.
                return events
            obj.name, obj.args_from = name, head.end()
            events.append(CallStart(self._started, obj.id, name))
            self._started += 1
        if obj.sent == 0:  # the arguments start at their first non-blank character
            while obj.args_from < len(obj.text) and obj.text[obj.args_from].isspace():
                obj.args_from += 1
        if obj.args_to == -1:
            end = _value_end(obj.text, obj.args_from)
            upto = end if end != -1 else len(obj.text)
            piece = obj.text[obj.args_from + obj.sent:upto]
            if piece:
                obj.sent += len(piece)
                events.append(CallArguments(self._started - 1, piece))
            if end != -1:
                obj.args_to = end
        return events

    @staticmethod
    def _close_at(obj: _Object) -> int:
        rest = obj.text[obj.args_to:]
        return obj.args_to + len(rest) - len(rest.lstrip()) + 1

    def _object_closed(self, obj: _Object) -> bool:
        rest = obj.text[obj.args_to:].lstrip()
        if not rest.startswith("}"):
            return False
        arguments = obj.text[obj.args_from:obj.args_to]
        assert obj.name is not None
        self._calls.append(ToolCall(obj.id, obj.name, arguments))
        return True

    # -- the public side ------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        if not self._in_calls:
            return self._content(text)
        self._raw += text
        return self._calls_from(text)

    def finish(self, cut: bool = False) -> tuple[list[Event], list[ToolCall]]:
        """The events still held and the complete calls. A call whose arguments did not close
        is dropped (max_tokens `cut` it), also before its name was announced: a forced call, or
        one begun with the format's opener or as a bare call to an offered tool, never comes
        back as raw JSON content. Calls written another way (keys in another order) are parsed
        whole here; if nothing was a call, what was held is content after all."""
        calls = [c for c in self._calls if _is_object(c.arguments)]
        if calls or self._started:
            return [], calls
        held = self._raw if self._in_calls else self._pending
        self._pending, self._object, self._raw = "", None, ""
        late = _whole_calls(held, self._known)
        if not late:
            if self._forced or (cut and self._in_calls and self._call_began(held)):
                return [], []
            return self._show(held), []
        events: list[Event] = []
        for call in late:
            events += [CallStart(self._started, call.id, call.name),
                       CallArguments(self._started, call.arguments)]
            self._started += 1
        return events, late

    def _call_began(self, held: str) -> bool:
        """Whether `held` (calls-mode text) shows a call begun: an opener, or a bare call to an
        offered tool."""
        return any(o in held for o in self._openers) or bare_head(held, self._known)[0] == "call"

    @property
    def content(self) -> str:
        return self._shown


def _whole_calls(text: str, known: frozenset[str]) -> list[ToolCall]:
    """Every call object in `text`, parsed whole; [] unless all of it is calls."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    at = 0
    while True:
        skipped = BETWEEN.match(text, at)
        at = skipped.end() if skipped else at
        if at >= len(text):
            return calls
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return []
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict) or item.get("name") not in known:
                return []
            args = item.get("arguments", item.get("parameters", {}))
            if not isinstance(args, dict):
                return []
            calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", item["name"],
                              json.dumps(args, ensure_ascii=False)))


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def call_parsers(request: GenerationRequest,
                 tool_format: ToolFormat) -> Callable[[], ToolCallParser] | None:
    """Makes each choice's parser of calls for `request`, on a model that writes calls as
    `tool_format`: the names are the tools its prompt offers, and the whole output is calls
    when its constraint forces them (tool_choice required or a named function; not the lazy
    constraint of tool_choice auto). None when the prompt offers no tools."""
    prompt = request.prompt
    if not isinstance(prompt, ChatPrompt) or not prompt.tools:
        return None
    constraint = request.constraint
    forced = constraint is not None and constraint.kind == "tool_calls" and not constraint.lazy
    return partial(ToolCallParser, tool_format, frozenset(t.name for t in prompt.tools), forced)
