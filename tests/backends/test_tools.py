"""Tool calling for any template: the generic tool prompt, the history rewrite for tool-unaware
templates, and the JSON schema that forces a well-formed call (checked with jsonschema)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest

from lokal.backends.base import ChatMessage, Role, Tool, ToolCall
from lokal.backends.tool_calls import ToolCallParser
from lokal.backends.tools import generic_tool_prompt, rewrite_for_generic, tool_call_schema

WEATHER = Tool("get_weather", "Weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = Tool("get_time", parameters={"type": "object", "properties": {"tz": {"type": "string"}},
                                    "required": ["tz"], "additionalProperties": False})
NO_PARAMS = Tool("ping")


def call(name: str, arguments: str, call_id: str = "c1") -> ToolCall:
    return ToolCall(call_id, name, arguments)


def valid(schema: Mapping[str, Any], instance: Any) -> bool:
    jsonschema.Draft202012Validator.check_schema(schema)
    return bool(jsonschema.Draft202012Validator(schema).is_valid(instance))


def listed_functions(prompt: str) -> list[dict[str, Any]]:
    """The JSON lines of the prompt: one per offered function."""
    return [json.loads(line) for line in prompt.splitlines() if line.startswith('{"name"')]


# -- the generic tool prompt -------------------------------------------------------------------

def test_generic_prompt_lists_each_function_as_one_json_line() -> None:
    functions = listed_functions(generic_tool_prompt([WEATHER, TIME]))
    assert functions == [
        {"name": "get_weather", "description": "Weather in a city",
         "parameters": WEATHER.parameters},
        {"name": "get_time", "description": "", "parameters": TIME.parameters},
    ]


def test_generic_prompt_gives_a_function_without_parameters_an_empty_object_schema() -> None:
    (ping,) = listed_functions(generic_tool_prompt([NO_PARAMS]))
    assert ping == {"name": "ping", "description": "",
                    "parameters": {"type": "object", "properties": {}}}


def test_generic_prompt_keeps_braces_and_non_ascii_of_descriptions_as_they_are() -> None:
    tool = Tool("météo", "Use {city} and {{unit}}", {"type": "object", "properties": {}})
    prompt = generic_tool_prompt([tool])
    assert '"name": "météo"' in prompt
    assert listed_functions(prompt)[0]["description"] == "Use {city} and {{unit}}"


def test_generic_prompt_teaches_the_hermes_call_form() -> None:
    prompt = generic_tool_prompt([WEATHER])
    # The template's doubled braces are format escapes: the model sees single ones.
    assert ('<tool_call>{"name": "<function name>", "arguments": <arguments as a JSON object>}'
            '</tool_call>') in prompt
    assert "{{" not in prompt and "{functions}" not in prompt


# -- the history rewrite -----------------------------------------------------------------------

def test_rewrite_turns_assistant_calls_into_tool_call_text_after_the_content() -> None:
    out = rewrite_for_generic([ChatMessage("assistant", "Let me check.", tool_calls=(
        call("get_weather", '{"city": "Paris"}'), call("get_time", '{"tz": "CET"}', "c2")))], [])
    assert out == [ChatMessage(
        "assistant",
        'Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        '</tool_call><tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>')]


def test_rewritten_calls_parse_back_with_the_hermes_parser() -> None:
    calls = (call("get_weather", '{"city": "Zürich"}'), call("get_time", '{"tz": "CET"}', "c2"))
    (message,) = rewrite_for_generic([ChatMessage("assistant", None, tool_calls=calls)], [])
    assert message.content is not None
    parser = ToolCallParser("hermes", frozenset({"get_weather", "get_time"}), False)
    parser.feed(message.content)
    _, parsed = parser.finish()
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [
        ("get_weather", {"city": "Zürich"}), ("get_time", {"tz": "CET"})]


def test_rewrite_keeps_arguments_that_are_not_json_as_a_string() -> None:
    (message,) = rewrite_for_generic(
        [ChatMessage("assistant", None, tool_calls=(call("get_weather", "{city: Paris"),))], [])
    assert message.content == ('<tool_call>{"name": "get_weather", "arguments": "{city: Paris"}'
                               '</tool_call>')


def test_rewrite_turns_tool_results_into_user_turns() -> None:
    out = rewrite_for_generic([ChatMessage("tool", "sunny", tool_call_id="c1"),
                               ChatMessage("tool", None)], [])
    assert out == [ChatMessage("user", '<tool_response id="c1">\nsunny\n</tool_response>'),
                   ChatMessage("user", "<tool_response>\n\n</tool_response>")]


def test_rewrite_leaves_other_messages_alone_and_adds_no_prompt_without_tools() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi", name="ann"),
                ChatMessage("assistant", "Hello")]
    assert rewrite_for_generic(messages, []) == messages


@pytest.mark.parametrize("role", ["system", "developer"])
def test_rewrite_joins_the_tool_prompt_to_a_leading_system_message(role: Role) -> None:
    out = rewrite_for_generic([ChatMessage(role, "Be brief."), ChatMessage("user", "Hi")],
                              [WEATHER])
    assert out == [ChatMessage(role, "Be brief.\n\n" + generic_tool_prompt([WEATHER])),
                   ChatMessage("user", "Hi")]


def test_rewrite_gives_an_empty_system_message_just_the_tool_prompt() -> None:
    out = rewrite_for_generic([ChatMessage("system", None), ChatMessage("user", "Hi")], [WEATHER])
    assert out[0] == ChatMessage("system", generic_tool_prompt([WEATHER]))


def test_rewrite_creates_a_system_message_when_none_leads() -> None:
    messages = [ChatMessage("user", "Hi"), ChatMessage("system", "late")]
    out = rewrite_for_generic(messages, [WEATHER, TIME])
    assert out == [ChatMessage("system", generic_tool_prompt([WEATHER, TIME])), *messages]


def test_rewrite_creates_a_system_message_for_an_empty_history() -> None:
    assert rewrite_for_generic([], [TIME]) == [ChatMessage("system", generic_tool_prompt([TIME]))]


# -- the forced-call schema --------------------------------------------------------------------

def test_single_tool_schema_is_exactly_one_call_to_it() -> None:
    schema = tool_call_schema([WEATHER], parallel=False)
    assert valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "get_time", "arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "get_weather", "arguments": {}})  # the tool's `required`
    assert not valid(schema, {"name": "get_weather"})
    assert not valid(schema, {"arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}, "id": "x"})
    assert not valid(schema, [{"name": "get_weather", "arguments": {"city": "Paris"}}])


def test_several_tools_give_any_of_their_calls() -> None:
    schema = tool_call_schema([WEATHER, TIME], parallel=False)
    assert "anyOf" in schema
    assert valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}})
    assert valid(schema, {"name": "get_time", "arguments": {"tz": "CET"}})
    # Each name is held to its own parameters, not the other tool's.
    assert not valid(schema, {"name": "get_time", "arguments": {"city": "Paris"}})
    assert not valid(schema, {"name": "get_weather", "arguments": {"tz": "CET"}})
    assert not valid(schema, {"name": "get_date", "arguments": {}})


def test_only_keeps_the_named_tool() -> None:
    schema = tool_call_schema([WEATHER, TIME], only="get_time", parallel=False)
    assert schema == tool_call_schema([TIME], parallel=False)
    assert valid(schema, {"name": "get_time", "arguments": {"tz": "CET"}})
    assert not valid(schema, {"name": "get_weather", "arguments": {"city": "Paris"}})


def test_parallel_is_a_non_empty_array_of_calls() -> None:
    schema = tool_call_schema([WEATHER, TIME])
    assert valid(schema, [{"name": "get_weather", "arguments": {"city": "Paris"}},
                          {"name": "get_time", "arguments": {"tz": "CET"}},
                          {"name": "get_weather", "arguments": {"city": "Rome"}}])
    assert valid(schema, [{"name": "get_time", "arguments": {"tz": "CET"}}])
    assert not valid(schema, [])
    assert not valid(schema, {"name": "get_time", "arguments": {"tz": "CET"}})
    assert not valid(schema, [{"name": "get_time", "arguments": {"tz": "CET"}},
                              {"name": "get_time", "arguments": {"tz": 1}}])


def test_parallel_with_only_is_an_array_of_calls_to_that_tool() -> None:
    schema = tool_call_schema([WEATHER, TIME], only="get_weather")
    assert valid(schema, [{"name": "get_weather", "arguments": {"city": "Paris"}}] * 2)
    assert not valid(schema, [{"name": "get_weather", "arguments": {"city": "Paris"}},
                              {"name": "get_time", "arguments": {"tz": "CET"}}])


def test_missing_parameters_default_to_any_object() -> None:
    schema = tool_call_schema([NO_PARAMS], parallel=False)
    assert valid(schema, {"name": "ping", "arguments": {}})
    assert valid(schema, {"name": "ping", "arguments": {"anything": 1}})
    assert not valid(schema, {"name": "ping", "arguments": "{}"})
    assert not valid(schema, {"name": "ping", "arguments": []})
