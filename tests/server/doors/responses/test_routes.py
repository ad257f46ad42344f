"""/v1/responses over a scripted engine: input items -> chat messages, tools and text.format
-> constraints, previous_response_id rebuilding the conversation, the store's routes, and
the 400s and 404s in OpenAI's envelope."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lokal.backends.base import ChatPrompt, Chunk, ToolCall, Usage
from lokal.backends.errors import EngineFailure
from lokal.server.settings import ServerSettings
from tests.openapi import validate
from tests.server.scripted import ScriptedBackend, scripted_client

TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}


@pytest.fixture()
def backend() -> ScriptedBackend:
    return ScriptedBackend([Chunk(0, "Hi", finish_reason="stop", usage=Usage(5, 1))])


@pytest.fixture()
def client(backend: ScriptedBackend, tmp_path: Path) -> TestClient:
    return scripted_client(backend, ServerSettings(data_dir=tmp_path))


def _post(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/responses", json={"model": "scripted", **body})


def _messages(backend: ScriptedBackend) -> list[tuple[str, str | None]]:
    prompt = backend.requests[-1].prompt
    assert isinstance(prompt, ChatPrompt)
    return [(m.role, m.content) for m in prompt.messages]


def test_items_become_chat_messages(client: TestClient, backend: ScriptedBackend) -> None:
    r = _post(client, instructions="Be brief.", tools=[TOOL], input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                     {"type": "input_text", "text": "Oslo?"}]},
        {"type": "message", "role": "assistant", "content": "Looking."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ])
    assert r.status_code == 200, r.text
    validate(r.json(), "Response")
    prompt = backend.requests[-1].prompt
    assert isinstance(prompt, ChatPrompt)
    assert _messages(backend) == [("system", "Be brief."), ("user", "Weather in Oslo?"),
                                  ("assistant", "Looking."), ("tool", "sunny")]
    assert prompt.messages[2].tool_calls == (
        ToolCall("c1", "get_weather", '{"city":"Oslo"}'),)
    assert prompt.messages[3].tool_call_id == "c1" and prompt.messages[3].name == "get_weather"
    assert prompt.tools[0].name == "get_weather"
    # auto: the model may answer in text; only a call it begins is held to the tool's schema
    constraint = backend.requests[-1].constraint
    assert constraint is not None and constraint.lazy and constraint.best_effort
    assert constraint.names == frozenset({"get_weather"})
    assert r.json()["tools"][0]["name"] == "get_weather"


def test_forced_tool_and_json_schema_become_constraints(client: TestClient,
                                                        backend: ScriptedBackend) -> None:
    r = _post(client, input="hi", tools=[TOOL],
              tool_choice={"type": "function", "name": "get_weather"})
    assert r.status_code == 200, r.text
    constraint = backend.requests[-1].constraint
    assert constraint is not None and constraint.kind == "tool_calls"
    assert r.json()["tool_choice"] == {"type": "function", "name": "get_weather"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    r = _post(client, input="hi", text={"format": {"type": "json_schema", "name": "out",
                                                   "schema": schema, "strict": True}},
              max_output_tokens=9, temperature=0.5)
    assert r.status_code == 200, r.text
    validate(r.json(), "Response")
    generation = backend.requests[-1]
    assert generation.constraint is not None and generation.constraint.schema == schema
    assert generation.sampling.max_tokens == 9 and generation.sampling.temperature == 0.5
    assert r.json()["text"]["format"]["name"] == "out"


def test_previous_response_id_rebuilds_the_conversation(client: TestClient,
                                                        backend: ScriptedBackend) -> None:
    first = _post(client, instructions="Old rules.", input="one").json()
    second = _post(client, instructions="New rules.", input="two",
                   previous_response_id=first["id"])
    assert second.status_code == 200, second.text
    assert _messages(backend) == [("system", "New rules."), ("user", "one"),
                                  ("assistant", "Hi"), ("user", "two")]
    assert second.json()["previous_response_id"] == first["id"]
    stored = client.get(f"/v1/responses/{second.json()['id']}")
    assert stored.status_code == 200 and stored.json() == second.json()


def test_store_routes(client: TestClient) -> None:
    made = _post(client, input=[{"role": "user", "content": f"m{i}"} for i in range(3)]).json()
    items = client.get(f"/v1/responses/{made['id']}/input_items").json()
    validate(items, "ResponseItemList")
    texts = [item["content"][0]["text"] for item in items["data"]]
    assert texts == ["m2", "m1", "m0"] and items["has_more"] is False
    page = client.get(f"/v1/responses/{made['id']}/input_items",
                      params={"order": "asc", "limit": 1}).json()
    assert page["has_more"] is True and page["data"][0]["content"][0]["text"] == "m0"
    rest = client.get(f"/v1/responses/{made['id']}/input_items",
                      params={"order": "asc", "after": page["last_id"]}).json()
    assert [item["content"][0]["text"] for item in rest["data"]] == ["m1", "m2"]
    deleted = client.delete(f"/v1/responses/{made['id']}")
    assert deleted.json() == {"id": made["id"], "object": "response", "deleted": True}
    unstored = _post(client, input="x", store=False).json()
    assert unstored["store"] is False
    for rid in (made["id"], unstored["id"]):
        for r in (client.get(f"/v1/responses/{rid}"), client.delete(f"/v1/responses/{rid}"),
                  client.get(f"/v1/responses/{rid}/input_items")):
            assert r.status_code == 404
            validate(r.json(), "ErrorResponse")
            assert r.json()["error"]["code"] == "not_found"
    missing = _post(client, input="x", previous_response_id="resp_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "previous_response_id"


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]"),
    ({"tools": [{"type": "custom", "name": "x"}]}, "tools[0].type"),
    ({"tools": [TOOL, {"type": "web_search"}], "tool_choice": {"type": "web_search"}},
     "tool_choice"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"reasoning": {"summary": "everything"}}, "reasoning.summary"),
    ({"background": True}, "background"),
    ({"include": ["message.output_text.logprobs"]}, "include[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"tools": [TOOL], "text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"truncation": "auto"}, "truncation"),
    ({"temperature": "1"}, "temperature"),
    ({"input": []}, "input"),
])
def test_what_lokal_cannot_honour_is_a_400(client: TestClient, body: dict[str, Any],
                                           param: str) -> None:
    r = _post(client, **{"input": "hi", **body})
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param


def test_harmless_parameters_are_accepted(client: TestClient) -> None:
    r = _post(client, input="hi", user="u1", metadata={"k": "v"}, truncation="disabled",
              include=["reasoning.encrypted_content"], reasoning={"effort": None},
              tool_choice="auto", parallel_tool_calls=False, service_tier="auto")
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "Response")
    assert body["metadata"] == {"k": "v"} and body["parallel_tool_calls"] is False


def test_failure_mid_stream_is_response_failed_and_not_stored(tmp_path: Path) -> None:
    backend = ScriptedBackend([Chunk(0, "par"), EngineFailure("the engine fell over")])
    client = scripted_client(backend, ServerSettings(data_dir=tmp_path))
    with client.stream("POST", "/v1/responses",
                       json={"model": "scripted", "input": "hi", "stream": True}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-2:] == ["response.output_text.delta", "response.failed"]
    failed = events[-1]
    validate(failed, "ResponseFailedEvent")
    assert failed["response"]["error"]["code"] == "server_error"
    assert "the engine fell over" not in failed["response"]["error"]["message"]  # no internals
    assert client.get(f"/v1/responses/{failed['response']['id']}").status_code == 404


def test_a_reasoning_effort_is_a_ceiling_met_with_no_reasoning(client: TestClient) -> None:
    """What Codex sends: an effort and a summary are ceilings a model that does not reason
    meets with none, so the request succeeds and its usage says no reasoning was done."""
    r = _post(client, input="hi", reasoning={"effort": "high", "summary": "auto"},
              include=["reasoning.encrypted_content"], store=False)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert all(item["type"] != "reasoning" for item in body["output"])


def test_hosted_tools_are_left_out_and_named(client: TestClient,
                                             backend: ScriptedBackend) -> None:
    """What Codex sends beside its functions: web search and the like, which OpenAI runs and
    lokal cannot. The request succeeds, the model is offered only the functions, and the
    response names what was left out."""
    r = _post(client, input="hi", tools=[TOOL, {"type": "web_search"},
                                         {"type": "code_interpreter", "container": "auto"}])
    assert r.status_code == 200, r.text
    assert r.headers["x-lokal-tools-left-out"] == "web_search, code_interpreter"
    prompt = backend.requests[-1].prompt
    assert isinstance(prompt, ChatPrompt) and [t.name for t in prompt.tools] == ["get_weather"]
    assert [t["type"] for t in r.json()["tools"]] == ["function", "web_search", "code_interpreter"]
    plain = _post(client, input="hi", tools=[TOOL])
    assert "x-lokal-tools-left-out" not in plain.headers


def test_a_strict_function_tool_is_enforced_not_best_effort(client: TestClient,
                                                           backend: ScriptedBackend) -> None:
    """A function tool's `strict` reaches the tool plan: in auto mode a call the model begins
    is held to a strict tool's schema exactly (it was dropped, so held only best effort)."""
    r = _post(client, input="hi", tools=[{**TOOL, "strict": True}])
    assert r.status_code == 200, r.text
    constraint = backend.requests[-1].constraint
    assert constraint is not None and constraint.lazy and not constraint.best_effort
    prompt = backend.requests[-1].prompt
    assert isinstance(prompt, ChatPrompt) and prompt.tools[0].strict is True
