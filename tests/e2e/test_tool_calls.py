"""Tool calls and JSON a small model finishes: the schemas clients really send (no
`additionalProperties`), forced on every front door within a small token budget; and with
tool_choice auto, the call forms small models write, held to their tool's schema once begun."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL, REPO, Server, start_server, stop_server
from tests.e2e.sse import read_events

# As clients send them: LangChain, the OpenAI SDK without strict, Claude Code and Codex set no
# additionalProperties. Open JSON Schema objects; lokal closes them.
WEATHER_PARAMS = {"type": "object", "required": ["city"], "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME_PARAMS = {"type": "object", "required": ["timezone"],
               "properties": {"timezone": {"type": "string"}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time",
                                      "parameters": TIME_PARAMS}},
]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def check_arguments(arguments: str | dict[str, Any], params: dict[str, Any]) -> None:
    """Valid against the schema as sent, and no key the schema does not declare."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(value, params)
    assert set(value) <= set(params["properties"]), value


@pytest.mark.parametrize("choice", [NAMED, "required"], ids=["named", "required"])
def test_forced_call_with_open_schemas_comes_back_within_64_tokens(
        http: httpx.Client, choice: Any) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "temperature": 0, "max_tokens": 64, "messages": ASK, "tools": TOOLS,
        "tool_choice": choice})
    assert r.status_code == 200, r.text
    out = r.json()["choices"][0]
    assert out["finish_reason"] == "tool_calls", out
    (call,) = out["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    check_arguments(call["function"]["arguments"], WEATHER_PARAMS)


@pytest.mark.parametrize("choice", [NAMED, "required"], ids=["named", "required"])
def test_streamed_forced_call_with_open_schemas_comes_back_within_64_tokens(
        http: httpx.Client, choice: Any) -> None:
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "temperature": 0, "max_tokens": 64, "messages": ASK,
            "tools": TOOLS, "tool_choice": choice, "stream": True}) as r:
        assert r.status_code == 200
        events, _ = read_events(r)
    deltas = [d for e in events if e["choices"]
              for d in e["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas and deltas[0]["function"]["name"] == "get_weather"
    check_arguments("".join(d["function"].get("arguments") or "" for d in deltas),
                    WEATHER_PARAMS)
    assert [e for e in events if e["choices"]][-1]["choices"][0]["finish_reason"] \
        == "tool_calls"


@pytest.mark.backends("llamacpp", "vllm")
def test_anthropic_forced_tool_with_an_open_schema(server: Server) -> None:
    claude = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0,
                                 timeout=120)
    msg = claude.messages.create(
        model=MODEL, max_tokens=128, messages=ASK,  # type: ignore[arg-type]
        tools=[{"name": "get_weather", "description": "Current weather",
                "input_schema": WEATHER_PARAMS}],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0})
    assert msg.stop_reason == "tool_use", msg
    (call,) = [b for b in msg.content if b.type == "tool_use"]
    assert call.name == "get_weather"
    check_arguments(call.input, WEATHER_PARAMS)  # type: ignore[arg-type]


def test_responses_forced_function_with_an_open_schema(client: openai.OpenAI) -> None:
    out = client.responses.create(
        model=MODEL, input="What is the weather like in Paris today?", temperature=0,
        max_output_tokens=64, tool_choice={"type": "function", "name": "get_weather"},
        tools=[{"type": "function", "name": "get_weather", "description": "Current weather",
                "parameters": WEATHER_PARAMS, "strict": False}])
    calls = [item for item in out.output if item.type == "function_call"]
    assert out.status == "completed" and len(calls) == 1, out
    assert calls[0].name == "get_weather"
    check_arguments(calls[0].arguments, WEATHER_PARAMS)


PERSON = {"type": "object", "required": ["name", "age"], "properties": {
    "name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"},
    "city": {"type": "string", "maxLength": 30}}}
# Properties split over allOf branches, as zod's .and() and schema composition make them:
# closing each branch on its own would leave no object valid.
SPLIT = {"allOf": [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}},
     "required": ["name"]},
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0,
                                              "maximum": 120}}, "required": ["age"]}]}


@pytest.mark.parametrize("schema", [PERSON, SPLIT], ids=["open", "allOf"])
def test_json_schema_without_additional_properties_finishes_with_declared_keys(
        http: httpx.Client, schema: dict[str, Any]) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "temperature": 0, "max_tokens": 96,
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "schema": schema}}})
    assert r.status_code == 200, r.text
    out = r.json()["choices"][0]
    assert out["finish_reason"] == "stop", out
    value = json.loads(out["message"]["content"])
    jsonschema.validate(value, schema)
    assert set(value) <= {"name", "age", "city"}, value


# --- tool_choice auto on Qwen2.5-Coder-0.5B-Instruct, which writes its calls as fenced JSON ----

QWEN = "qwen2.5-coder-0.5b-instruct"
READ_PARAMS = {"type": "object", "required": ["file_path"], "properties": {
    "file_path": {"type": "string", "description": "The absolute path to the file to read"},
    "offset": {"type": "integer", "description": "The line number to start reading from"},
    "limit": {"type": "integer", "description": "The number of lines to read"}}}
AGENT_TOOLS = [
    {"type": "function", "function": {
        "name": "Read", "parameters": READ_PARAMS,
        "description": "Reads a file from the local filesystem. offset: the line number to "
                       "start reading from; limit: the number of lines to read."}},
    TOOLS[0],
]
PARAMS = {"Read": READ_PARAMS, "get_weather": WEATHER_PARAMS}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = REPO / "configs" / "qwen2.5-coder-0.5b-instruct.yaml"
    tmp: Path = tmp_path_factory.mktemp("qwen")
    srv = start_server(tmp, "--config", str(config), env={"LOKAL_DATA_DIR": str(tmp / "d")})
    yield srv
    stop_server(srv)


def qwen_chat(server: Server, content: str, **extra: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.v1}/chat/completions", timeout=300, json={
        "model": QWEN, "max_tokens": 96, "tools": AGENT_TOOLS,
        "messages": [{"role": "user", "content": content}], **extra})
    assert r.status_code == 200, r.text
    choice: dict[str, Any] = r.json()["choices"][0]
    return choice


def test_auto_a_fenced_json_call_is_a_tool_call(qwen: Server) -> None:
    out = qwen_chat(qwen, "What is the weather like in Paris today?", temperature=0)
    assert out["finish_reason"] == "tool_calls", out
    (call,) = out["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    check_arguments(call["function"]["arguments"], WEATHER_PARAMS)
    assert not out["message"]["content"]


def test_auto_calls_that_begin_validate_against_their_tool(qwen: Server) -> None:
    """Unconstrained, this model answers "metric units" with {"unit": "metric"} (2 of 19
    calls over these prompts and seeds were invalid): once a call begins, its arguments
    are held to the tool's schema, integers stay integers and enums stay in the enum."""
    calls = 0
    for content in ("Weather in Rome please, metric units",
                    "What's the weather in Oslo, in kelvin?",
                    "Read lines ten to twenty of /etc/hosts"):
        for seed in range(3):
            out = qwen_chat(qwen, content, temperature=0.7, seed=seed)
            for call in out["message"].get("tool_calls") or []:
                calls += 1
                check_arguments(call["function"]["arguments"], PARAMS[call["function"]["name"]])
    assert calls >= 6, "too few calls were made for the test to show anything"


def test_auto_streamed_fenced_call_streams_its_arguments(qwen: Server) -> None:
    with httpx.stream("POST", f"{qwen.v1}/chat/completions", timeout=300, json={
            "model": QWEN, "max_tokens": 96, "tools": AGENT_TOOLS, "temperature": 0,
            "stream": True, "messages": [{"role": "user", "content":
                                          "Read the file /etc/hosts from line 10, 5 lines."}]
            }) as r:
        events, _ = read_events(r)
    deltas = [d for e in events if e["choices"]
              for d in e["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas and deltas[0]["function"]["name"] == "Read"
    pieces = [d["function"]["arguments"] for d in deltas if d["function"].get("arguments")]
    assert len(pieces) > 3  # streamed as generated, not parsed at the end
    check_arguments("".join(pieces), READ_PARAMS)
    assert not "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                       if e["choices"])


def test_auto_an_answer_in_words_stays_text(qwen: Server) -> None:
    out = qwen_chat(qwen, "Write a haiku about the sea.", temperature=0)
    assert out["finish_reason"] == "stop" and not out["message"].get("tool_calls")
    assert out["message"]["content"].strip()


@pytest.mark.backends("llamacpp")  # vLLM does not hold auto calls to their schema yet
def test_auto_with_an_unenforceable_tool_is_best_effort_unless_strict(
        http: httpx.Client) -> None:
    params = {"type": "object", "properties": {"n": {"type": "number", "not": {"const": 3}}}}
    tool: dict[str, Any] = {"type": "function", "function": {"name": "f", "parameters": params}}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 8, "tools": [tool, TOOLS[0]]}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    tool["function"]["strict"] = True
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tools" and "'not'" in r.json()["error"]["message"]


def test_auto_with_tools_over_the_schema_limit_is_unconstrained_not_refused(
        http: httpx.Client) -> None:
    """The schema limits bound what a request can make the server compile. With tool_choice
    auto the call constraint is best effort: over the limit it is dropped (the request gets
    what it got before auto calls were constrained); forced, the same tools are a 400."""
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(60):  # deeper than the 48 levels allowed, small enough for the prompt
        deep = {"type": "object", "properties": {"a": deep}}
    tools = [{"type": "function", "function": {"name": "pick", "parameters": deep}}]
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, "tools": tools}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    r = http.post("/v1/chat/completions", json={**body, "tool_choice": "required"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "schema_too_deep"
