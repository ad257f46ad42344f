"""Structured output, tools, logprobs and logit_bias: enforced or refused, never ignored."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL
from tests.e2e.sse import read_events
from tests.openapi import validate, validate_completion_chunk

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pet"],
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer"},
                         "pet": {"enum": ["cat", "dog", "none"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 40},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "required": ["tz"], "additionalProperties": False,
                   "properties": {"tz": {"type": "string", "maxLength": 40}}}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                    "strict": True}}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_always_validates(http: httpx.Client, seed: int) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "seed": seed, "max_tokens": 80,
        "messages": [{"role": "user", "content": "Describe a person."}],
        "response_format": _schema_format(PERSON)})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), PERSON)


def test_json_schema_enforced_when_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, seed=9, max_tokens=80, stream=True,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format=_schema_format(PERSON))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_output_is_an_object(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, seed=4, max_tokens=200, temperature=0.3,
        messages=[{"role": "user", "content": "Reply with a short JSON object."}],
        response_format={"type": "json_object"})
    text = out.choices[0].message.content or ""
    assert text.lstrip().startswith("{")
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.backends("llamacpp")  # which keywords are enforceable depends on the engine
@pytest.mark.parametrize(("schema", "keyword", "where"), [
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                "uniqueItems": True}}}, "uniqueItems",
     "/properties/tags"),
    ({"type": "object", "not": {"required": ["a"]}}, "not", "at / "),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "dependencies": {"a": ["b"]}},
     "dependencies", "at / "),
    # A property named like a keyword is a name, not the keyword: the path is the nested one.
    ({"type": "object", "properties": {"if": {"type": "object", "properties": {
        "x": {"if": {"type": "string"}, "then": {"minLength": 2}}}}}}, "if",
     "/properties/if/properties/x"),
])
def test_unenforceable_schema_keyword_is_400_naming_it_and_its_path(
        http: httpx.Client, schema: Any, keyword: str, where: str) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "response_format": _schema_format(schema)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert f"'{keyword}'" in error["message"] and where in error["message"], error
    assert error["param"] == "response_format"
    assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK,
                                                   "max_tokens": 2}).status_code == 200


def _check_call(call: Any, tool: dict[str, Any]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_required_tool_call_parses_and_validates(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80,
                                         tools=[WEATHER, TIME], tool_choice="required",
                                         parallel_tool_calls=False, seed=1)  # type: ignore[list-item]
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    _check_call(call, WEATHER if call.function.name == "get_weather" else TIME)


def test_named_tool_choice_forces_that_function(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 80, "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]),
                        TIME["function"]["parameters"])
    assert body["choices"][0]["finish_reason"] == "tool_calls"


# Sampling-dependent: with seed 5, SmolLM2 on vLLM (the Q4_1 weights dequantised, fp32 matmuls)
# keeps appending calls to the unbounded array until max_tokens, so the JSON never closes; on
# llama.cpp (quantised matmuls) it closes. The other tool tests check the contract on both.
@pytest.mark.backends("llamacpp")
def test_parallel_tool_calls_may_return_several(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=200, seed=5,
                                         tools=[WEATHER], tool_choice="required")  # type: ignore[list-item]
    calls = out.choices[0].message.tool_calls or []
    assert calls and out.choices[0].finish_reason == "tool_calls"
    for call in calls:
        _check_call(call, WEATHER)
    assert len({c.id for c in calls}) == len(calls)


def test_streamed_tool_call_follows_openais_delta_shape(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "max_tokens": 80, "stream": True,
            "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}) as r:
        assert r.status_code == 200
        events, _ = read_events(r)
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"]["name"] == "get_weather"
    assert all("id" not in d and "name" not in d["function"] for d in deltas[1:])
    assert all(d["index"] == 0 for d in deltas)
    args = "".join(d["function"]["arguments"] for d in deltas)
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_call_arguments_stream_as_they_are_generated(http: httpx.Client) -> None:
    """The arguments arrive in many deltas spread over the generation, the first long before
    the call ends, not in one burst at the end."""
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "max_tokens": 80, "stream": True, "seed": 5,
            "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append((time.monotonic(), json.loads(line[6:])))
    fragments = [(at, d) for at, e in arrivals if e["choices"]
                 for d in e["choices"][0]["delta"].get("tool_calls", [])
                 if d["function"].get("arguments")]
    assert len(fragments) >= 4, fragments
    assert len({at for at, _ in fragments}) >= 3  # several network events, not one burst
    finished_at = next(at for at, e in arrivals if e["choices"]
                       and e["choices"][0]["finish_reason"] is not None)
    assert finished_at - fragments[0][0] > 0.02
    args = "".join(d["function"]["arguments"] for _, d in fragments)
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])


def test_auto_tool_choice_gives_text_or_valid_calls(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60, seed=2,
                                         tools=[WEATHER])  # type: ignore[list-item]
    choice = out.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            _check_call(call, WEATHER)
    else:
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_tool_history_renders(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, max_tokens=20, tools=[WEATHER], messages=[  # type: ignore[list-item]
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
    ])
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert out.usage is not None and out.usage.prompt_tokens > 60


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string"}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias"),
])
def test_bad_tools_logprobs_and_bias_are_400(http: httpx.Client, body: dict[str, Any],
                                             param: str) -> None:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body})
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param
    assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK,
                                                   "max_tokens": 2}).status_code == 200


def test_chat_logprobs_shape_and_values(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 5, "temperature": 0,
        "logprobs": True, "top_logprobs": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in content) == body["choices"][0]["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert tops[0]["token"] == entry["token"]


def test_chat_logprobs_streaming(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "max_tokens": 4, "stream": True,
            "logprobs": True, "top_logprobs": 0}) as r:
        events, _ = read_events(r)
    entries = [x for e in events for c in e["choices"] if c["logprobs"]
               for x in c["logprobs"]["content"]]
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    assert len(entries) == 4 and all(x["top_logprobs"] == [] for x in entries)


def test_completion_logprobs(client: openai.OpenAI, http: httpx.Client) -> None:
    out = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4,
                                    temperature=0, logprobs=5)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == out.choices[0].text
    assert all(len(t) == 5 for t in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    with http.stream("POST", "/v1/completions", json={
            "model": MODEL, "prompt": "The sky is", "max_tokens": 4, "temperature": 0,
            "logprobs": 2, "stream": True}) as r:
        events, _ = read_events(r)
    for event in events:
        validate_completion_chunk(event)
    assert sum(len(e["choices"][0]["logprobs"]["tokens"]) for e in events
               if e["choices"][0]["logprobs"]) == 4
    bad = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "logprobs": 6})
    assert bad.status_code == 400


def test_logit_bias_is_applied(http: httpx.Client, vocab: Any) -> None:
    def first_token(bias: dict[str, int]) -> list[int]:
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "The sky is",
                                               "max_tokens": 1, "temperature": 0,
                                               "logit_bias": bias, "logprobs": 0})
        assert r.status_code == 200, r.text
        token = r.json()["choices"][0]["logprobs"]["tokens"][0]
        ids: list[int] = vocab.tokenize(token.encode(), add_bos=False, special=False)
        return ids

    greedy = first_token({})
    assert len(greedy) == 1
    banned = first_token({str(greedy[0]): -100})
    assert banned != greedy
    forced_id = vocab.tokenize(b" banana", add_bos=False, special=False)[0]
    assert first_token({str(forced_id): 100}) == [forced_id]


@pytest.mark.backends("llamacpp")
def test_unenforceable_tool_parameters_are_400(http: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "number", "not": {"const": 3}}}}}}
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK,
                                               "tools": [tool], "tool_choice": "required"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tools" and "'not'" in r.json()["error"]["message"]


# What Pydantic v2 and OpenAI strict mode emit: bounds, formats, patterns, $defs/$ref,
# Optional as anyOf with null, enums; plus keywords that constrain nothing (a draft-04 `id`, a
# vendor extension), which validators ignore and so does lokal.
RECEIPT = {
    "type": "object", "additionalProperties": False, "id": "urn:receipt", "_format": "vendor",
    "required": ["confidence", "email", "count", "code", "status", "note"],
    "properties": {
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "email": {"type": "string", "format": "email", "maxLength": 40},
        "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 90, "multipleOf": 3},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$", "minLength": 3},
        "status": {"$ref": "#/$defs/Status"},
        "note": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]}},
    "$defs": {"Status": {"enum": ["open", "closed"], "type": "string"}}}


@pytest.mark.parametrize("seed", [1, 2])
def test_bounds_formats_patterns_and_refs_are_enforced(http: httpx.Client, seed: int) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "seed": seed, "temperature": 0.6, "max_tokens": 200,
        "messages": [{"role": "user", "content": "Describe a receipt as JSON."}],
        "response_format": _schema_format(RECEIPT)})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    out = json.loads(choice["message"]["content"])
    jsonschema.Draft202012Validator(RECEIPT, format_checker=jsonschema.FormatChecker()
                                    ).validate(out)


def test_langchain_structured_output_with_pydantic_bounds(server: Any) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Verdict(BaseModel):
        label: str = Field(max_length=20)
        confidence: float = Field(ge=0, le=1)
        votes: int = Field(ge=1, le=5)
        reviewer: uuid.UUID  # format: uuid

    llm = ChatOpenAI(base_url=server.v1, api_key="unused", model=MODEL, temperature=0.5,
                     max_tokens=120, seed=3, max_retries=0)
    verdict = llm.with_structured_output(Verdict, method="json_schema").invoke(
        "Is the sky green? Give a verdict.")
    assert isinstance(verdict, Verdict)
    assert 0 <= verdict.confidence <= 1 and 1 <= verdict.votes <= 5


def test_a_forced_call_cut_inside_its_arguments_leaks_nothing(http: httpx.Client) -> None:
    """On every engine: max_tokens ends the output inside the first call's arguments; the cut
    call is dropped, nothing of it comes back as content, and the reason stays length."""
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
        "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not choice["message"].get("tool_calls") and not choice["message"]["content"]


# The next two need a model that keeps adding calls until max_tokens: SmolLM2 on llama.cpp does
# at temperature 0.8. On vLLM, since objects are closed and its JSON compact, every seed makes
# one call and closes the list within 24 tokens (checked with 8 cities asked for too), so no
# request is cut there; what they check is the engine-neutral parser and renderer.
@pytest.mark.backends("llamacpp")
def test_forced_calls_cut_by_max_tokens_keep_the_complete_ones(http: httpx.Client) -> None:
    """tool_choice required lets the model add calls until max_tokens: the calls it finished
    come back as tool_calls with finish_reason length, never as raw JSON content."""
    cut_with_calls = 0
    for seed in range(8):
        r = http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required",
            "max_tokens": 64, "seed": seed, "temperature": 0.8})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        for call in calls:
            tool = WEATHER if call["function"]["name"] == "get_weather" else TIME
            jsonschema.validate(json.loads(call["function"]["arguments"]),
                                tool["function"]["parameters"])
        if calls:
            assert not choice["message"]["content"]
        if choice["finish_reason"] == "length" and calls:
            cut_with_calls += 1
    assert cut_with_calls, "no seed ran past max_tokens: the test proved nothing"


@pytest.mark.backends("llamacpp")
def test_streamed_forced_calls_cut_by_max_tokens_keep_the_complete_ones(
        http: httpx.Client) -> None:
    for seed in range(8):
        with http.stream("POST", "/v1/chat/completions", json={
                "model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "stream": True,
                "tool_choice": "required", "max_tokens": 64, "seed": seed,
                "temperature": 0.8}) as r:
            events, _ = read_events(r)
        finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1]
        names = [d["function"]["name"] for e in events if e["choices"]
                 for d in e["choices"][0]["delta"].get("tool_calls") or []
                 if d.get("function", {}).get("name")]
        if finish == "length" and names:
            return
    raise AssertionError("no streamed request was cut with complete calls")
