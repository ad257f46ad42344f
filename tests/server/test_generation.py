"""serve_generation() through the app over a scripted engine: caller faults before the first
chunk are plain 4xx, later failures one error event, leases released however a response
ends, several prompts renumbered p * n + i, and tool calls read in the model's own format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lokal.backends.base import Chunk, GenerationRequest, ModelInfo, TextPrompt, Usage
from lokal.backends.errors import (
    ContextLengthExceeded,
    EngineFailure,
    InvalidParameter,
)
from lokal.backends.pool import ModelPool
from lokal.backends.tool_formats import ModelFormat
from tests.server.scripted import ScriptedBackend, scripted_client

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}
# A Mistral model's call, in pieces as an engine streams it, after some text.
MISTRAL_CALL = ["Sure. ", "[TOOL_CALLS]", '[{"name": "get_weather", ',
                '"arguments": {"city": "Oslo"}}]']


@dataclass
class PerPrompt(ScriptedBackend):
    """Answers each prompt with `n` choices: choice i of prompt "a" says "a:i"; a prompt named
    in `refuse` is refused before its first chunk. Usage: the prompt's length, 1 token each."""

    refuse: tuple[str, ...] = ()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        try:
            assert isinstance(request.prompt, TextPrompt)
            text = request.prompt.text
            if text in self.refuse:
                raise InvalidParameter(f"prompt {text!r} refused", param="prompt")
            for i in range(request.n):
                yield Chunk(i, f"{text}:")
                yield Chunk(i, str(i), finish_reason="stop", usage=Usage(len(text), 1))
        finally:
            self.closed += 1


@dataclass
class FormatBackend(ScriptedBackend):
    """A scripted model that writes tool calls in `tool_format`."""

    tool_format: ModelFormat = "hermes"

    @property
    def info(self) -> ModelInfo:
        return replace(super().info, tool_format=self.tool_format)


@contextmanager
def _client(backend: ScriptedBackend) -> Iterator[TestClient]:
    client = scripted_client(backend)
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def _events(r: httpx.Response) -> list[Any]:
    data = [line.removeprefix("data: ") for line in r.text.splitlines()
            if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def _pool(client: TestClient) -> ModelPool:
    pool = client.app.state.pool  # type: ignore[attr-defined]
    assert isinstance(pool, ModelPool)
    return pool


def _running(client: TestClient) -> int:
    return _pool(client).find("scripted").running


def _unloads(client: TestClient) -> str:
    """Unloads the model, which waits for every lease to be released (2 s at most)."""
    async def unload() -> str:
        state = await asyncio.wait_for(_pool(client).unload("scripted"), 2)
        return state.status.value

    assert client.portal is not None
    return client.portal.call(unload)


# -- faults before and after the first chunk -------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("fault", "code"), [
    (InvalidParameter("temperature 0 is not supported", param="temperature"), "invalid_value"),
    (ContextLengthExceeded(5000, 10, 2048), "context_length_exceeded"),
])
def test_a_fault_before_the_first_chunk_is_a_plain_400(stream: bool, fault: Exception,
                                                        code: str) -> None:
    backend = ScriptedBackend([fault])
    with _client(backend) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("application/json")
        assert "data:" not in r.text
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert _running(client) == 0 and backend.closed == 1


def test_a_failure_after_the_first_chunk_streams_one_error_event_then_ends() -> None:
    backend = ScriptedBackend([Chunk(0, "par"), Chunk(0, "tial"),
                               EngineFailure("decode failed at /internal/path")])
    with _client(backend) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                        headers={"x-request-id": "req_mid"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
        assert events[-1] == "[DONE]"
        errors = [e for e in events[:-1] if "error" in e]
        assert errors == [events[-2]]  # exactly one, last before [DONE]
        error = errors[0]["error"]
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert "req_mid" in error["message"] and "/internal/path" not in error["message"]
        deltas = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert deltas == ["", "par", "tial"]
        assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
        assert _running(client) == 0 and backend.closed == 1


def test_a_failure_after_the_first_chunk_of_a_collected_response_is_a_500() -> None:
    backend = ScriptedBackend([Chunk(0, "partial"), EngineFailure("decode failed")])
    with _client(backend) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error"
        assert _running(client) == 0 and backend.closed == 1


# -- leases ------------------------------------------------------------------------------------


def test_the_lease_is_released_after_streamed_and_collected_responses() -> None:
    backend = ScriptedBackend([Chunk(0, "Hi"), Chunk(0, "!", finish_reason="stop",
                                                     usage=Usage(3, 2))])
    with _client(backend) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.status_code == 200 and _events(r)[-1] == "[DONE]"
        assert _running(client) == 0 and backend.closed == 1
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "Hi!"
        assert _running(client) == 0 and backend.closed == 2
        r = client.post("/v1/completions", json={"model": "scripted", "prompt": "x",
                                                 "stream": True})
        assert r.status_code == 200 and _events(r)[-1] == "[DONE]"
        assert _running(client) == 0 and backend.closed == 3
        assert _unloads(client) == "unloaded"


def test_a_refused_prompt_releases_the_prompts_already_started() -> None:
    backend = PerPrompt([], refuse=("bad",))
    with _client(backend) as client:
        r = client.post("/v1/completions", json={"model": "scripted", "stream": True,
                                                 "prompt": ["good", "bad", "never"]})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "prompt"
        # "good" was primed, then given up; "never" never started
        assert [g.prompt for g in backend.requests] == [TextPrompt("good"), TextPrompt("bad")]
        assert _running(client) == 0


@dataclass
class FailsFirstPrompt(ScriptedBackend):
    """The first prompt of several fails after its first chunk; the others finish."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        yield Chunk(0, "x")
        if request.request_id.endswith("-0"):
            raise EngineFailure("decode failed")
        yield Chunk(0, "y", finish_reason="stop", usage=Usage(1, 2))


@pytest.mark.parametrize("stream", [True, False])
def test_a_failing_prompt_releases_the_prompts_after_it(stream: bool) -> None:
    backend = FailsFirstPrompt([])
    with _client(backend) as client:
        r = client.post("/v1/completions", json={"model": "scripted", "stream": stream,
                                                 "prompt": ["a", "b", "c"]})
        assert r.status_code == (200 if stream else 500)
        assert "internal_error" in r.text
        assert _running(client) == 0  # prompts "b" and "c" hold theirs


# -- several prompts ---------------------------------------------------------------------------


def test_several_prompts_are_renumbered_prompt_by_prompt() -> None:
    backend = PerPrompt([])
    with _client(backend) as client:
        r = client.post("/v1/completions", json={"model": "scripted", "n": 2,
                                                 "prompt": ["a", "bcd", "ef"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [(c["index"], c["text"]) for c in body["choices"]] == [
            (0, "a:0"), (1, "a:1"), (2, "bcd:0"), (3, "bcd:1"), (4, "ef:0"), (5, "ef:1")]
        assert all(c["finish_reason"] == "stop" for c in body["choices"])
        # each prompt's tokens count once, however many choices it had
        assert body["usage"]["prompt_tokens"] == 1 + 3 + 2
        assert body["usage"]["completion_tokens"] == 6
        assert [g.request_id.rsplit("-", 1)[1] for g in backend.requests] == ["0", "1", "2"]
        assert _running(client) == 0


def test_several_prompts_stream_renumbered() -> None:
    backend = PerPrompt([])
    with _client(backend) as client:
        r = client.post("/v1/completions", json={
            "model": "scripted", "n": 2, "prompt": ["a", "bc"], "stream": True,
            "stream_options": {"include_usage": True}})
        assert r.status_code == 200
        events = _events(r)
        assert events[-1] == "[DONE]"
        texts: dict[int, str] = {}
        for e in events[:-2]:
            [choice] = e["choices"]
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        assert texts == {0: "a:0", 1: "a:1", 2: "bc:0", 3: "bc:1"}
        assert events[-2]["choices"] == []
        assert events[-2]["usage"]["prompt_tokens"] == 1 + 2
        assert events[-2]["usage"]["completion_tokens"] == 4
        assert _running(client) == 0 and backend.closed == 2


# -- tool calls in the model's own format ------------------------------------------------------


def _chat_with_tools(client: TestClient, **extra: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={**CHAT, "tools": [TOOL], **extra})


def _writes_mistral_call(tool_format: ModelFormat) -> FormatBackend:
    """A model of `tool_format` whose reply is MISTRAL_CALL, then stop."""
    script = [Chunk(0, t) for t in MISTRAL_CALL] + [
        Chunk(0, finish_reason="stop", usage=Usage(9, 12))]
    return FormatBackend(script, tool_format=tool_format)


def _tool_choice(client: TestClient) -> dict[str, Any]:
    """The one choice of a successful non-streaming chat request with TOOL."""
    r = _chat_with_tools(client)
    assert r.status_code == 200, r.text
    [choice] = r.json()["choices"]
    return choice


def test_a_mistral_model_s_calls_are_parsed_as_mistral() -> None:
    with _client(_writes_mistral_call("mistral")) as client:
        choice = _tool_choice(client)
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "Sure. "
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}

        r = _chat_with_tools(client, stream=True)
        events = _events(r)
        starts = [d["tool_calls"][0] for e in events[:-1]
                  for d in [e["choices"][0]["delta"]] if "tool_calls" in d]
        assert starts[0]["function"]["name"] == "get_weather"
        arguments = "".join(s["function"]["arguments"] for s in starts)
        assert json.loads(arguments) == {"city": "Oslo"}
        assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_same_text_from_a_hermes_model_is_content() -> None:
    with _client(_writes_mistral_call("hermes")) as client:
        choice = _tool_choice(client)
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == "".join(MISTRAL_CALL)
        assert "tool_calls" not in choice["message"]


def test_a_hermes_model_s_calls_are_parsed_as_hermes() -> None:
    # after some text: at a reply's very start every format reads a call in any wrapper
    script = [Chunk(0, "Let me look. <tool_call>"),
              Chunk(0, '{"name": "get_weather", "arguments": '),
              Chunk(0, '{"city": "Rome"}}</tool_call>', finish_reason="stop",
                    usage=Usage(9, 12))]
    for fmt, calls in (("hermes", 1), ("mistral", 0)):
        backend = FormatBackend(script, tool_format=fmt)  # type: ignore[arg-type]
        with _client(backend) as client:
            [choice] = _chat_with_tools(client).json()["choices"]
            assert len(choice["message"].get("tool_calls", [])) == calls, fmt
            if calls:
                args = choice["message"]["tool_calls"][0]["function"]["arguments"]
                assert json.loads(args) == {"city": "Rome"}
            else:
                assert choice["message"]["content"].startswith("Let me look. <tool_call>{")


def test_without_tools_no_calls_are_parsed() -> None:
    with _client(_writes_mistral_call("mistral")) as client:
        [choice] = client.post("/v1/chat/completions", json=CHAT).json()["choices"]
        assert choice["message"]["content"] == "".join(MISTRAL_CALL)
        assert choice["finish_reason"] == "stop"
