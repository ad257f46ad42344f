"""The one sandboxed Jinja renderer for HF-style chat templates, shared by every engine."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.base import ChatMessage
from backends.errors import InvalidParameter
from backends.tools import rewrite_for_generic

# Used only when a model ships no template of its own; documented in the README.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(InvalidParameter):
    """The template refused the conversation (e.g. raise_exception for bad role order)."""


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template rejected the messages: {message}", param="messages")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def message_to_dict(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            call = dict(call)
            function = dict(call.get("function", {}))
            # HF templates expect arguments as a mapping; OpenAI sends a JSON string.
            args = function.get("arguments")
            if isinstance(args, str):
                try:
                    function["arguments"] = json.loads(args)
                except json.JSONDecodeError:
                    pass
            call["function"] = function
            calls.append(call)
        out["tool_calls"] = calls
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


class ChatTemplate:
    """Renders a conversation with a model's own template, in a sandbox."""

    def __init__(
        self, source: str | None, *, bos_token: str = "", eos_token: str = ""
    ) -> None:
        self.source = source or FALLBACK_TEMPLATE
        self.is_fallback = source is None
        # HF templates that render tools read the `tools` variable; others get the generic
        # tool prompt and history rewrite of backends/tools.py.
        self.supports_tools = "tools" in self.source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _compile(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"invalid chat template: {exc}") from exc

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        add_generation_prompt: bool = True,
    ) -> str:
        if not self.supports_tools:
            messages = rewrite_for_generic(messages, tools)
            tools = ()
        context: dict[str, Any] = {
            "messages": [message_to_dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools:
            context["tools"] = [dict(t) for t in tools]
        try:
            return self._template.render(**context)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidParameter(f"chat template refused: {exc}", param="messages") from exc
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            raise InvalidParameter(
                f"chat template could not render the messages: {exc}", param="messages"
            ) from exc


def template_source(configured: str | None,
                    own: str | None) -> Literal["model", "config", "fallback"]:
    """Which template a model renders with: the YAML's wins over the model file's own."""
    if configured:
        return "config"
    return "model" if own else "fallback"
