"""OpenAI chat and completions requests -> GenerationRequests (messages, content parts, tools,
response_format, logprobs, prompts), and usage and logprobs in their wire shapes."""

from __future__ import annotations

from typing import Any

import pytest

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Constraint,
    LogprobsRequest,
    TextPrompt,
    TokenLogprob,
    TokenPrompt,
    Tool,
    ToolCall,
    TopLogprob,
    Usage,
)
from lokal.backends.chat_template import tool_to_dict
from lokal.server.doors.openai.translate import (
    UsageTotal,
    chat_logprobs,
    chat_request,
    completion_logprobs,
    completion_prompts,
    completion_requests,
    usage_wire,
)
from lokal.server.doors.openai.wire import ChatCompletionRequest, CompletionRequest
from lokal.server.doors.translate import Translated
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _chat(**body: Any) -> Translated:
    return chat_request(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [USER], **body}), "req_1")


def _completions(**body: Any) -> list[Any]:
    return completion_requests(CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", **body}), "req_1")


def _refused(call: Any, **body: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        call(**body)
    assert caught.value.status == 400
    return caught.value


# -- chat_request --------------------------------------------------------------------------


def test_messages_become_a_chat_prompt() -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    t = _chat(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?", "name": "ann"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])
    g = t.generation
    assert g.request_id == "req_1" and g.n == 1 and g.logprobs is None
    assert g.constraint is None
    assert isinstance(g.prompt, ChatPrompt) and g.prompt.tools == ()
    assert g.prompt.messages == (
        ChatMessage("system", "Be brief."), ChatMessage("user", "Weather?", name="ann"),
        ChatMessage("assistant", None,
                    tool_calls=(ToolCall("c1", "get_weather", '{"city":"Oslo"}'),)),
        ChatMessage("tool", "sunny", tool_call_id="c1"))


def test_text_parts_are_joined() -> None:
    t = _chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]}])
    assert isinstance(t.generation.prompt, ChatPrompt)
    assert t.generation.prompt.messages[0].content == "Hello, world"


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio"},
    {"type": "text"},  # a text part with no text
])
def test_a_part_that_is_not_text_names_its_place(part: dict[str, Any]) -> None:
    err = _refused(_chat, messages=[USER, {"role": "user", "content": [
        {"type": "text", "text": "look:"}, part]}])
    assert (err.param, err.code) == ("messages[1].content[1]", "unsupported_content_type")
    assert f"'{part['type']}'" in err.message


def test_a_tool_message_needs_its_tool_call_id() -> None:
    err = _refused(_chat, messages=[USER, {"role": "tool", "content": "sunny"}])
    assert (err.param, err.code) == ("messages[1].tool_call_id", "missing_required_parameter")


def test_only_an_assistant_message_may_leave_out_its_content() -> None:
    err = _refused(_chat, messages=[{"role": "user"}])
    assert (err.param, err.code) == ("messages[0].content", "missing_required_parameter")
    t = _chat(messages=[USER, {"role": "assistant", "content": None}])
    assert isinstance(t.generation.prompt, ChatPrompt)
    assert t.generation.prompt.messages[1].content is None


def test_top_logprobs_needs_logprobs() -> None:
    err = _refused(_chat, top_logprobs=3)
    assert (err.param, err.code) == ("top_logprobs", "invalid_value")
    err = _refused(_chat, top_logprobs=3, logprobs=False)
    assert err.param == "top_logprobs"


def test_logprobs_and_n_are_carried() -> None:
    g = _chat(logprobs=True, top_logprobs=4, n=3).generation
    assert g.logprobs == LogprobsRequest(4) and g.n == 3
    assert _chat(logprobs=True).generation.logprobs == LogprobsRequest(0)
    assert _chat(logprobs=False).generation.logprobs is None


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert _chat(max_tokens=10, max_completion_tokens=20).generation.sampling.max_tokens == 20
    assert _chat(max_tokens=10).generation.sampling.max_tokens == 10
    assert _chat().generation.sampling.max_tokens is None  # the room the context leaves


def test_sampling_fields_are_carried() -> None:
    s = _chat(temperature=0, top_p=0.5, seed=3, stop=["\n", ""], presence_penalty=0.5,
              frequency_penalty=-0.5, logit_bias={"11": -100}, top_k=5, min_p=0.1,
              repetition_penalty=1.2).generation.sampling
    assert (s.temperature, s.top_p, s.seed, s.stop) == (0.0, 0.5, 3, ("\n",))
    assert (s.presence_penalty, s.frequency_penalty, s.logit_bias) == (0.5, -0.5, {11: -100.0})
    assert (s.top_k, s.min_p, s.repetition_penalty) == (5, 0.1, 1.2)
    assert _refused(_chat, logit_bias={"x": 1}).param == "logit_bias"


def test_response_format_becomes_the_constraint() -> None:
    assert _chat(response_format={"type": "text"}).generation.constraint is None
    assert _chat(response_format={"type": "json_object"}).generation.constraint == \
        Constraint(kind="json_object")
    c = _chat(response_format={"type": "json_schema",
                               "json_schema": {"name": "out", "schema": SCHEMA}}
              ).generation.constraint
    assert c == Constraint(kind="json_schema", schema=SCHEMA)


@pytest.mark.parametrize("fmt", [{"type": "json_schema"},
                                 {"type": "json_schema", "json_schema": {"name": "out"}}])
def test_json_schema_without_a_schema_is_refused(fmt: dict[str, Any]) -> None:
    err = _refused(_chat, response_format=fmt)
    assert (err.param, err.code) == ("response_format.json_schema.schema",
                                     "missing_required_parameter")


def test_a_response_format_schema_over_the_limits_is_refused() -> None:
    body = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [USER],
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMA}}})
    with pytest.raises(APIError) as caught:
        chat_request(body, "r", SchemaLimits(max_bytes=20))
    assert (caught.value.param, caught.value.code) == ("response_format", "schema_too_large")


def test_tools_become_the_plan_and_the_prompts_tools() -> None:
    t = _chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert t.plan.forced and t.plan.names == {"get_weather"}
    assert isinstance(t.generation.prompt, ChatPrompt)
    assert t.generation.prompt.tools == (
        Tool("get_weather", parameters=TOOL["function"]["parameters"]),)
    # what the chat template sees is the request's tool as it came
    assert [tool_to_dict(tool) for tool in t.generation.prompt.tools] == [TOOL]
    c = t.generation.constraint
    assert c is not None and c.kind == "tool_calls" and not c.lazy
    auto = _chat(tools=[TOOL], parallel_tool_calls=False).generation.constraint
    assert auto is not None and auto.lazy
    err = _refused(_chat, tools=[TOOL], response_format={"type": "json_object"})
    assert (err.param, err.code) == ("response_format", "unsupported_parameter")
    assert _refused(_chat, tool_choice="auto").param == "tool_choice"


# -- completion_requests -------------------------------------------------------------------


def test_one_prompt_is_one_request_with_the_request_id() -> None:
    [g] = _completions(prompt="Once", n=2, logprobs=2, suffix="end", seed=1)
    assert g.request_id == "req_1" and g.prompt == TextPrompt("Once")
    assert (g.n, g.logprobs, g.suffix, g.sampling.seed) == (2, LogprobsRequest(2), "end", 1)
    assert g.sampling.max_tokens == 16  # the legacy endpoint's default
    [g] = _completions(max_tokens=40, logprobs=0)
    assert g.sampling.max_tokens == 40 and g.logprobs == LogprobsRequest(0)
    assert _completions()[0].logprobs is None


def test_several_prompts_are_one_request_each_with_suffixed_ids() -> None:
    gs = _completions(prompt=["a", "b", "c"], n=2, temperature=0)
    assert [g.request_id for g in gs] == ["req_1-0", "req_1-1", "req_1-2"]
    assert [g.prompt for g in gs] == [TextPrompt("a"), TextPrompt("b"), TextPrompt("c")]
    assert all(g.n == 2 and g.sampling.temperature == 0.0 for g in gs)


def test_token_id_prompts() -> None:
    [g] = _completions(prompt=[1, 2, 3])
    assert g.prompt == TokenPrompt((1, 2, 3)) and g.request_id == "req_1"
    gs = _completions(prompt=[[1, 2], [3]])
    assert [g.prompt for g in gs] == [TokenPrompt((1, 2)), TokenPrompt((3,))]
    assert [g.request_id for g in gs] == ["req_1-0", "req_1-1"]


@pytest.mark.parametrize("prompt", [[], [[]], [[1], []]])
def test_empty_arrays_are_refused(prompt: Any) -> None:
    err = _refused(_completions, prompt=prompt)
    assert (err.param, err.code) == ("prompt", "empty_array")


def test_completion_prompts_of_strings_and_a_string() -> None:
    assert completion_prompts("x") == [TextPrompt("x")]
    assert completion_prompts(["x", ""]) == [TextPrompt("x"), TextPrompt("")]


def test_echo_is_refused() -> None:
    err = _refused(_completions, echo=True)
    assert (err.param, err.code) == ("echo", "unsupported_parameter")
    assert len(_completions(echo=False)) == 1


def test_best_of_other_than_n_is_refused() -> None:
    err = _refused(_completions, best_of=3, n=2)
    assert (err.param, err.code) == ("best_of", "unsupported_parameter")
    assert _refused(_completions, best_of=2).param == "best_of"  # n defaults to 1
    assert _completions(best_of=2, n=2)[0].n == 2
    assert _completions(best_of=1)[0].n == 1


# -- usage ---------------------------------------------------------------------------------


def test_usage_wire() -> None:
    assert usage_wire(Usage(10, 5, 4)) == {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4}}


def test_usage_total_counts_each_prompt_once() -> None:
    total = UsageTotal()
    total.add(Usage(10, 3, 2), 0)
    total.add(Usage(10, 4, 2), 0)  # the second choice of the same prompt
    total.add(None, 1)  # a choice without usage adds nothing, and does not mark prompt 1
    total.add(Usage(7, 1, 0), 1)
    total.add(Usage(7, 2, 0), 1)
    assert total.usage() == Usage(17, 10, 2)
    assert UsageTotal().usage() == Usage(0, 0, 0)


# -- logprobs ------------------------------------------------------------------------------


ENTRIES = (
    TokenLogprob("He", (72, 101), -0.5, (TopLogprob("He", (72, 101), -0.5),
                                         TopLogprob("Hi", (72, 105), -1.25))),
    TokenLogprob("llo", (108, 108, 111), -0.1),
    TokenLogprob("é", (195, 169), -2.0, (TopLogprob("é", (195, 169), -2.0),)),
)


def test_chat_logprobs_shape() -> None:
    assert chat_logprobs(ENTRIES) == {"content": [
        {"token": "He", "logprob": -0.5, "bytes": [72, 101], "top_logprobs": [
            {"token": "He", "logprob": -0.5, "bytes": [72, 101]},
            {"token": "Hi", "logprob": -1.25, "bytes": [72, 105]}]},
        {"token": "llo", "logprob": -0.1, "bytes": [108, 108, 111], "top_logprobs": []},
        {"token": "é", "logprob": -2.0, "bytes": [195, 169], "top_logprobs": [
            {"token": "é", "logprob": -2.0, "bytes": [195, 169]}]},
    ], "refusal": None}
    assert chat_logprobs(()) == {"content": [], "refusal": None}


def test_completion_logprobs_shape_and_text_offsets() -> None:
    assert completion_logprobs(ENTRIES, 0) == {
        "tokens": ["He", "llo", "é"],
        "token_logprobs": [-0.5, -0.1, -2.0],
        "top_logprobs": [{"He": -0.5, "Hi": -1.25}, {}, {"é": -2.0}],
        "text_offset": [0, 2, 5],  # characters, not bytes
    }
    # a later chunk's tokens start where the text so far ends
    assert completion_logprobs(ENTRIES[1:], 7)["text_offset"] == [7, 10]
    assert completion_logprobs((), 3)["text_offset"] == []
