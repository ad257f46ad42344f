"""The one sandboxed Jinja renderer for HF-style chat templates, shared by every engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lokal.backends.base import ChatMessage, Tool, ToolCall
from lokal.backends.errors import InvalidParameter
from lokal.backends.tools import rewrite_for_generic

# Stands in for the final message's text to find where a template puts it.
_MARK = "\x00lokal-final-message\x00"

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
        out["tool_calls"] = [call_to_dict(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def call_to_dict(call: ToolCall) -> dict[str, Any]:
    """A call as HF templates read it: OpenAI's shape, with the arguments as a mapping (as
    they expect) when the JSON text parses."""
    arguments: Any = call.arguments
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError:
        pass
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


def tool_to_dict(tool: Tool) -> dict[str, Any]:
    """A tool as HF templates read it (OpenAI's function-tool shape), with only the fields the
    request gave."""
    function: dict[str, Any] = {"name": tool.name}
    for key, value in (("description", tool.description), ("parameters", tool.parameters),
                       ("strict", tool.strict)):
        if value is not None:
            function[key] = value
    return {"type": "function", "function": function}


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
        tools: Sequence[Tool] = (),
        add_generation_prompt: bool = True,
        continue_final: bool = False,
    ) -> str:
        """With `continue_final` the text ends right after the final message's content (no
        end-of-turn), so the model continues that message: a prefilled assistant reply."""
        if continue_final:
            return self._continue_final(messages, tools)
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
            context["tools"] = [tool_to_dict(t) for t in tools]
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

    def _continue_final(self, messages: Sequence[ChatMessage],
                        tools: Sequence[Tool]) -> str:
        if not messages or not messages[-1].content:
            raise InvalidParameter("there is no final message text to continue",
                                   param="messages")
        content = messages[-1].content
        full = self.render(messages, tools=tools, add_generation_prompt=False)
        # Where the template puts the text, found with a marker: a bare search for the text
        # would cut inside the end-of-turn tokens when the text also occurs there (e.g. "<").
        marked = self.render([*messages[:-1], replace(messages[-1], content=_MARK)],
                             tools=tools, add_generation_prompt=False)
        at = marked.find(_MARK)
        if at >= 0 and full.startswith(head := marked[:at] + content):
            return head
        # A template that branches on the text itself: cut after the text's last occurrence.
        found = full.rfind(content)
        if at < 0 or found < 0:
            raise InvalidParameter(
                "this model's chat template cannot continue a final assistant message: it "
                "does not reproduce the message's text verbatim", param="messages")
        return full[:found + len(content)]


def template_source(configured: str | None,
                    own: str | None) -> Literal["model", "config", "fallback"]:
    """Which template a model renders with: the YAML's wins over the model file's own."""
    if configured:
        return "config"
    return "model" if own else "fallback"
