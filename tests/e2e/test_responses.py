"""OpenAI's Responses API through real HTTP and the openai SDK: create, stream (every event
against the spec), json_schema parsed, a function-call round trip over previous_response_id,
the store's routes, error shapes, a dropped stream freeing the engine, and the store across a
restart of a server of our own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.openapi import validate
from tests.server.doors.responses.test_render import SCHEMAS

WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "strict": True,
           "parameters": {"type": "object", "additionalProperties": False,
                          "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 40}}}}
KEY = "responses-test-key"


class Verdict(BaseModel):
    answer: Literal["yes", "no"]


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Each event's data, checked: its `event:` name is its type, it validates against its
    own schema and the stream union, and sequence numbers count up from 0."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[dict[str, Any]] = []
    for block in "".join(response.iter_text()).split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        name, data = lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))
        assert len(lines) == 2 and lines[0].startswith("event: ") and name == data["type"]
        assert data["sequence_number"] == len(events)
        validate(data, SCHEMAS[name])
        validate(data, "ResponseStreamEvent")
        events.append(data)
    return events


def test_create_retrieve_list_delete(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, instructions="Answer in one short sentence.", input="Say hello.",
        max_output_tokens=16, metadata={"test": "crud"})
    body = raw.http_response.json()
    validate(body, "Response")
    made = raw.parse()
    assert made.id.startswith("resp_") and made.status in ("completed", "incomplete")
    assert made.output[0].type == "message" and made.output_text
    assert made.usage is not None and made.usage.input_tokens > 0
    assert 0 < made.usage.output_tokens <= 16
    assert body["instructions"] == "Answer in one short sentence."
    assert body["metadata"] == {"test": "crud"}

    assert client.responses.retrieve(made.id).model_dump() == made.model_dump()
    items = client.responses.input_items.with_raw_response.list(made.id)
    validate(items.http_response.json(), "ResponseItemList")
    data = items.parse().data
    assert len(data) == 1 and data[0].type == "message"
    deleted = client.responses.with_raw_response.delete(made.id).http_response.json()
    assert deleted == {"id": made.id, "object": "response", "deleted": True}
    for call in (lambda: client.responses.retrieve(made.id),
                 lambda: client.responses.delete(made.id),
                 lambda: client.responses.input_items.list(made.id)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        validate({"error": err.value.body}, "ErrorResponse")
        assert err.value.code == "not_found"


def test_stream_events_and_the_stored_result(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/responses", json={
            "model": MODEL, "input": "Name three colours.", "stream": True,
            "max_output_tokens": 12}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] <= 12
    assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}
    stored = http.get(f"/v1/responses/{final['id']}")
    assert stored.status_code == 200 and stored.json() == final


def test_sdk_stream_parses_json_schema_output(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Is the sea wet? Answer in JSON.",
                                 text_format=Verdict, max_output_tokens=60,
                                 store=False) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.done" in kinds
    assert isinstance(final.output_parsed, Verdict)
    with pytest.raises(openai.NotFoundError):  # store=False: nothing kept
        client.responses.retrieve(final.id)


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60)
    calls = [o for o in first.output if o.type == "function_call"]
    assert first.status == "completed" and len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.id and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    raw = client.responses.with_raw_response.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER],
        tool_choice="none", max_output_tokens=24,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": '{"temperature_c": 21, "sky": "clear"}'}])
    validate(raw.http_response.json(), "Response")
    second = raw.parse()
    assert second.previous_response_id == first.id
    assert [o.type for o in second.output] == ["message"]
    # The second prompt holds the whole conversation, not only the tool's output.
    question = client.responses.create(model=MODEL, input="What is the weather in Paris?",
                                       max_output_tokens=1, store=False)
    assert second.usage is not None and question.usage is not None
    assert second.usage.input_tokens > question.usage.input_tokens + 8
    items = client.responses.input_items.list(second.id).data
    assert [i.type for i in items] == ["function_call_output"]


def test_error_shapes(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        image: Any = {"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}
        client.responses.create(model=MODEL, input=[image])
    assert bad.value.body is not None
    validate({"error": bad.value.body}, "ErrorResponse")
    assert bad.value.code == "unsupported_content_type"
    r = http.post("/v1/responses", json={"model": MODEL, "input": "hi",
                                         "tools": [{"type": "custom", "name": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].type"
    r = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 4,
                                         "tools": [{"type": "web_search"}]})
    assert r.status_code == 200, r.text  # a hosted tool lokal cannot run is left out, and said
    assert r.headers["x-lokal-tools-left-out"] == "web_search"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="no-such-model", input="hi")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    assert gone.value.body is not None
    validate({"error": gone.value.body}, "ErrorResponse")


def test_dropped_stream_frees_the_engine_and_stores_nothing(server: Server,
                                                            http: httpx.Client) -> None:
    # The schema forces thousands of tokens: only a cancel ends this generation soon.
    endless = {"type": "object", "required": ["n"], "properties": {"n": {
        "type": "array", "items": {"type": "integer"}, "minItems": 3000}}}
    before = server.log_text().count("cancelled after")
    with http.stream("POST", "/v1/responses", json={
            "model": MODEL, "input": "Count.", "stream": True, "max_output_tokens": 8000,
            "text": {"format": {"type": "json_schema", "name": "n", "schema": endless}}}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        created = json.loads(next(ln for ln in lines if ln.startswith("data: "))[6:])
        got = [next(lines) for _ in range(30)]
        assert any("response.output_text.delta" in line for line in got)
    dropped_at = time.monotonic()
    ok = http.post("/v1/responses", timeout=120,
                   json={"model": MODEL, "input": "hi", "max_output_tokens": 4})
    assert ok.status_code == 200, ok.text
    # A wait on the log line, with room for a busy machine: a generation that went on would
    # never be logged as cancelled, however long this waited.
    while server.log_text().count("cancelled after") == before \
            and time.monotonic() < dropped_at + 120:
        time.sleep(0.1)
    assert server.log_text().count("cancelled after") > before
    assert http.get(f"/v1/responses/{created['response']['id']}").status_code == 404


def test_previous_response_id_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    def serve() -> Server:
        return start_server(tmp_path, "--data-dir", str(data_dir), env={"LOKAL_API_KEY": KEY})

    srv = serve()
    try:
        client = openai.OpenAI(base_url=srv.v1, api_key=KEY, max_retries=0, timeout=120)
        first = client.responses.create(model=MODEL, input="My name is Ada.",
                                        max_output_tokens=12)
        with pytest.raises(openai.AuthenticationError) as denied:
            openai.OpenAI(base_url=srv.v1, api_key="wrong", max_retries=0).responses.create(
                model=MODEL, input="hi")
        assert denied.value.body is not None
        validate({"error": denied.value.body}, "ErrorResponse")
    finally:
        stop_server(srv)
    srv = serve()
    try:
        client = openai.OpenAI(base_url=srv.v1, api_key=KEY, max_retries=0, timeout=120)
        assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
        alone = client.responses.create(model=MODEL, input="What is my name?",
                                        max_output_tokens=8, store=False)
        second = client.responses.create(model=MODEL, input="What is my name?",
                                         previous_response_id=first.id, max_output_tokens=8)
        assert second.status in ("completed", "incomplete")
        assert second.usage is not None and alone.usage is not None and first.usage is not None
        # The first turn ("My name is Ada." and the answer) is in the second prompt.
        assert second.usage.input_tokens > alone.usage.input_tokens + 4
    finally:
        stop_server(srv)
    assert (data_dir / "responses.sqlite3").is_file()
