"""Text completions (IDE autocomplete path) against the real model."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from tests.conftest import MODEL
from tests.e2e.sse import read_events
from tests.openapi import validate, validate_completion_chunk

PROMPT = "def fibonacci(n):\n"


def test_completion_validates_against_openai_spec(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 12,
                                           "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateCompletionResponse")
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] <= 12


def test_default_max_tokens_is_openais_16(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0)
    assert out.usage is not None
    assert out.usage.completion_tokens <= 16
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 16


def test_completion_stream_wire_and_text_matches(http: httpx.Client,
                                                 client: openai.OpenAI) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = client.completions.create(**body)
    with http.stream("POST", "/v1/completions",
                     json={**body, "stream": True,
                           "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events, _ = read_events(r)
    for event in events:
        validate_completion_chunk(event)
    assert all(e["choices"][0]["text"] is not None for e in events[:-1])
    assert len({e["id"] for e in events}) == 1
    assert all("usage" not in e for e in events[:-1])
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert events[-2]["choices"][0]["finish_reason"] == plain.choices[0].finish_reason
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == plain.choices[0].text


def test_token_id_prompt_equals_text_prompt(client: openai.OpenAI, http: httpx.Client,
                                            vocab: Any) -> None:
    text = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=6, temperature=0)
    ids = vocab.tokenize(b"The capital of France is", add_bos=True, special=True)
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 6,
                                           "temperature": 0})
    assert r.status_code == 200, r.text
    assert text.usage is not None
    assert r.json()["usage"]["prompt_tokens"] == len(ids) == text.usage.prompt_tokens
    assert r.json()["choices"][0]["text"] == text.choices[0].text


def test_list_of_prompts_gives_one_choice_each(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt=["Hello", "Goodbye"], max_tokens=3,
                                    temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    one = client.completions.create(model=MODEL, prompt="Goodbye", max_tokens=3, temperature=0)
    assert out.choices[2].text == one.choices[0].text


def test_completion_stop_list(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=20,
                                     temperature=0).choices[0].text
    assert " 7" in full, full
    out = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=20,
                                    temperature=0, stop=["x", " 7", "y", "zz", "w"])
    assert out.choices[0].text == full[: full.index(" 7")]
    assert out.choices[0].finish_reason == "stop"
