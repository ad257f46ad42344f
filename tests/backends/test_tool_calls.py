"""The tool-call parser per model family, fed token-sized pieces: content until a call
begins, the name once known, arguments as generated, complete calls at the end."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Constraint,
    GenerationRequest,
    TextPrompt,
    Tool,
)
from lokal.backends.tool_calls import (
    CallArguments,
    CallStart,
    Event,
    ToolCallParser,
    call_parsers,
)
from lokal.backends.tool_formats import CallTrigger, ToolFormat, format_for_template

KNOWN = frozenset({"get_weather", "get_time"})
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
TIME = '{"name": "get_time", "arguments": {"tz": "CET"}}'


def run(fmt: ToolFormat, text: str, forced: bool = False, step: int = 3) -> tuple[
        str, list[tuple[str, str]], list[Event]]:
    """Feed `text` in `step`-character pieces: (content, [(name, arguments)], all events)."""
    parser = ToolCallParser(fmt, KNOWN, forced)
    events: list[Event] = []
    for at in range(0, len(text), step):
        events += parser.feed(text[at:at + step])
    tail, calls = parser.finish()
    events += tail
    content = "".join(e for e in events if isinstance(e, str))
    return content, [(c.name, c.arguments) for c in calls], events


def streamed_arguments(events: list[Event], index: int) -> str:
    return "".join(e.text for e in events if isinstance(e, CallArguments) and e.index == index)


@pytest.mark.parametrize(("fmt", "text"), [
    ("hermes", f"Let me check.<tool_call>\n{WEATHER}\n</tool_call>"),
    ("hermes", f"<tool_call>{WEATHER}</tool_call>\n<tool_call>{TIME}</tool_call>"),
    ("llama3", f"<|python_tag|>{WEATHER}; {TIME}"),
    ("llama3", WEATHER.replace('"arguments"', '"parameters"')),
    ("mistral", f"[TOOL_CALLS][{WEATHER}, {TIME}]"),
    ("mistral", f"[{WEATHER}]"),  # the marker is a special token whose text is not output
    ("json", f"[{WEATHER}, {TIME}]"),
    ("json", WEATHER),
])
def test_every_format_gives_its_calls_and_streams_their_arguments(fmt: ToolFormat,
                                                                  text: str) -> None:
    content, calls, events = run(fmt, text, forced=fmt == "json")
    assert calls and calls[0][0] == "get_weather"
    assert json.loads(calls[0][1]) == {"city": "Paris", "unit": "celsius"}
    starts = [e for e in events if isinstance(e, CallStart)]
    assert [s.name for s in starts] == [name for name, _ in calls]
    for i, (_, arguments) in enumerate(calls):
        assert streamed_arguments(events, i) == arguments  # streamed = final, piece by piece
    assert "<tool_call>" not in content and "[TOOL_CALLS]" not in content
    assert content.strip() in ("", "Let me check.")


def test_arguments_stream_before_the_call_is_complete() -> None:
    parser = ToolCallParser("hermes", KNOWN, False)
    events = parser.feed('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa')
    assert isinstance(events[0], CallStart) and events[0].name == "get_weather"
    assert streamed_arguments(events, 0) == '{"city": "Pa'
    assert streamed_arguments(parser.feed('ris"}}</tool_call>'), 0) == 'ris"}'


def test_a_call_cut_by_max_tokens_is_dropped_and_the_complete_ones_kept() -> None:
    _, calls, _ = run("json", f'[{WEATHER}, {TIME}, {{"name": "get_weather", "arguments": {{"ci',
                      forced=True)
    assert [name for name, _ in calls] == ["get_weather", "get_time"]


def test_plain_text_stays_content_including_lookalikes() -> None:
    text = "Use <b>bold</b> and a <tool_ thing, and {braces} later."
    content, calls, _ = run("hermes", text)
    assert calls == [] and content == text


def test_an_unknown_function_is_content_not_a_call() -> None:
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    content, calls, events = run("hermes", text)
    assert calls == [] and content == text
    assert not any(isinstance(e, CallStart) for e in events)


def test_keys_in_another_order_still_parse_at_the_end() -> None:
    text = '<tool_call>{"arguments": {"tz": "UTC"}, "name": "get_time"}</tool_call>'
    _, calls, events = run("hermes", text)
    assert calls == [("get_time", '{"tz": "UTC"}')]
    assert [e.name for e in events if isinstance(e, CallStart)] == ["get_time"]


def test_strings_with_braces_and_escapes_do_not_end_the_arguments_early() -> None:
    tricky = '{"name": "get_time", "arguments": {"tz": "a}\\"b{", "n": [1, {"x": "]"}]}}'
    _, calls, _ = run("json", tricky, forced=True, step=1)
    assert json.loads(calls[0][1]) == {"tz": 'a}"b{', "n": [1, {"x": "]"}]}


@pytest.mark.parametrize(("template", "fmt"), [
    ("{% if tools %}<tool_call>{{ tools }}</tool_call>{% endif %}", "hermes"),
    ("{{ '<|python_tag|>' }}{% if message.role == 'ipython' %}", "llama3"),
    ("[AVAILABLE_TOOLS] {{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes"),
    (None, "hermes"),
])
def test_the_format_comes_from_the_chat_template(template: str | None, fmt: str) -> None:
    assert format_for_template(template) == fmt


# The forms small models write with tool_choice auto (Qwen2.5-Coder-0.5B writes the fenced one).
@pytest.mark.parametrize("text", [
    f"```json\n{WEATHER}\n```",
    f"```\n{WEATHER}\n```\n",
    f"```markdown\n{json.dumps(json.loads(WEATHER), indent=2)}\n```",
    f"  {WEATHER}",
    f"[{WEATHER}, {TIME}]",
    f"```json\n[{WEATHER}]\n```",
])
@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
def test_a_reply_that_is_a_bare_fenced_or_listed_call_is_calls(text: str, fmt: ToolFormat) -> None:
    content, calls, events = run(fmt, text)
    assert content == ""
    assert calls and calls[0][0] == "get_weather"
    assert json.loads(calls[0][1]) == {"city": "Paris", "unit": "celsius"}
    assert len(calls) == text.count('"name"')
    # The arguments streamed, in more than one piece.
    assert len([e for e in events if isinstance(e, CallArguments) and e.index == 0]) > 1


@pytest.mark.parametrize("text", [
    '```json\n{"name": "send_mail", "arguments": {"to": "x"}}\n```',  # not an offered tool
    f"Here is how a call looks:\n```json\n{WEATHER}\n```",  # not the whole reply
    '```json\n{"city": "Paris"}\n```',  # an object, not a call
    '```python\nprint("hi")\n```',
    '{"name": "get_weather", "arguments": "Paris"}',  # arguments not an object
    "[1] See the weather report.",
])
def test_anything_else_stays_text(text: str) -> None:
    content, calls, _ = run("hermes", text)
    assert calls == [] and content == text


def test_text_that_cannot_be_a_call_streams_at_once() -> None:
    parser = ToolCallParser("hermes", KNOWN, forced=False)
    assert parser.feed("```py") == []  # a fence: a call may follow
    assert parser.feed("\nprint") == ["```py\nprint"]
    parser = ToolCallParser("hermes", KNOWN, forced=False)
    assert parser.feed('{"answer": 4') == ['{"answer": 4']


def feed_trigger(trigger: CallTrigger, text: str, step: int = 3) -> str | None:
    for at in range(0, len(text), step):
        call = trigger.feed(text[at:at + step])
        if call is not None:
            return call + text[at + step:]
    return None


def test_the_trigger_finds_an_opener_anywhere_and_a_bare_call_only_at_the_start() -> None:
    assert feed_trigger(CallTrigger("hermes", KNOWN), f"Let me look.<tool_call>\n{WEATHER}") \
        == f"\n{WEATHER}"
    assert feed_trigger(CallTrigger("hermes", KNOWN), f"```json\n{WEATHER}") == WEATHER
    assert feed_trigger(CallTrigger("hermes", KNOWN), f"See: {WEATHER}") is None
    assert feed_trigger(CallTrigger("hermes", KNOWN),
                        '{"name": "send_mail", "arguments": {}}') is None


def test_the_trigger_fires_once_the_name_is_known_and_again_after_a_close() -> None:
    trigger = CallTrigger("hermes", KNOWN)
    assert trigger.feed("[") is None and trigger.feed('{"name": "get_w') is None
    assert trigger.feed('eather"') == '{"name": "get_weather"'
    assert trigger.feed(', "arguments": {}}') is None  # within the call: the engine holds it
    trigger.closed()
    assert trigger.feed(', {"name": "get_time"') == '{"name": "get_time"'


def test_the_trigger_gives_up_on_a_long_unfinished_name() -> None:
    trigger = CallTrigger("llama3", KNOWN)
    assert trigger.feed('{"name": "' + "x" * 600) is None
    assert trigger.feed('", "parameters": {}}') is None
    assert trigger.feed("<|python_tag|>") == ""


def finish_after(fmt: ToolFormat, text: str, cut: bool, forced: bool = False) -> tuple[
        str, list[Event], list[tuple[str, str]]]:
    parser = ToolCallParser(fmt, KNOWN, forced)
    events = parser.feed(text)
    tail, calls = parser.finish(cut=cut)
    events += tail
    return "".join(e for e in events if isinstance(e, str)), events, [(c.name, c.arguments)
                                                                      for c in calls]


@pytest.mark.parametrize(("fmt", "text", "forced", "shown"), [
    ("json", '[\n{\n"name": "get_weather",', True, ""),  # before the name was announced
    ("hermes", 'Let me look.<tool_call>\n{"name": "get_wea', False, "Let me look."),
    ("hermes", '```json\n{"name": "get_weather", "argu', False, ""),
])
def test_a_call_cut_before_its_arguments_is_dropped_not_shown(
        fmt: ToolFormat, text: str, forced: bool, shown: str) -> None:
    content, events, calls = finish_after(fmt, text, cut=True, forced=forced)
    assert content == shown and calls == []
    assert not any(isinstance(e, CallStart) for e in events)


def test_unparseable_text_that_ended_by_itself_stays_content() -> None:
    text = '<tool_call>{"name": "get_weather" oops</tool_call>'
    content, _, calls = finish_after("hermes", text, cut=False)
    assert content == text and calls == []
    # Cut, a reply that only looks like a call to an unknown tool is text as well.
    content, _, _ = finish_after("hermes", '{"name": "send_mail", "argu', cut=True)
    assert content == '{"name": "send_mail", "argu'


# -- the parsers a request gets ---------------------------------------------------------------

WEATHER_TOOL = Tool("get_weather", parameters={"type": "object", "properties": {
    "city": {"type": "string"}}})


def _request(tools: tuple[Tool, ...], constraint: Constraint | None = None) -> GenerationRequest:
    return GenerationRequest("r", ChatPrompt((ChatMessage("user", "hi"),), tools=tools),
                             constraint=constraint)


def test_a_request_gets_a_fresh_parser_per_choice_in_the_models_format() -> None:
    make = call_parsers(_request((WEATHER_TOOL,)), "mistral")
    assert make is not None
    first, second = make(), make()
    assert first is not second
    first.feed('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    _, calls = first.finish()
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Oslo"}')]
    assert second.finish()[1] == []  # the first one's state is not shared


def _content_and_calls(make: Callable[[], ToolCallParser] | None,
                       text: str) -> tuple[str, list[str]]:
    assert make is not None
    parser = make()
    events = parser.feed(text)
    tail, calls = parser.finish()
    return "".join(e for e in [*events, *tail] if isinstance(e, str)), [c.name for c in calls]


def test_the_names_are_the_prompts_tools_and_forcing_is_the_constraints() -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    forced = Constraint("tool_calls", schema={}, lazy=False)
    lazy = Constraint("tool_calls", schema={}, lazy=True, names=frozenset({"get_weather"}))
    for constraint in (lazy, None):  # tool_choice auto (held lazily, or over the limits)
        make = call_parsers(_request((WEATHER_TOOL,), constraint), "mistral")
        assert _content_and_calls(make, call) == ("", ["get_weather"])
        assert _content_and_calls(make, f"Sure. {call}") == (f"Sure. {call}", [])
    # forced: the whole output is calls (JSON), so text before one is not shown as content
    make = call_parsers(_request((WEATHER_TOOL,), forced), "mistral")
    assert _content_and_calls(make, f"Sure. {call}") == ("", [])
    assert _content_and_calls(make, f"[{call}]") == ("", ["get_weather"])
    # a tool the request did not offer is text
    other = call_parsers(_request((Tool("get_time"),)), "hermes")
    assert _content_and_calls(other, call) == (call, [])


def test_no_tools_no_parser() -> None:
    assert call_parsers(_request(()), "hermes") is None
    assert call_parsers(GenerationRequest("r", TextPrompt("hi")), "hermes") is None
