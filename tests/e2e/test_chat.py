"""Chat completions against the real model through the official openai client and raw httpx."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import MODEL
from tests.e2e.sse import read_events
from tests.openapi import validate

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_plain_chat_completion_validates_against_openai_spec(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions",
                  json={"model": MODEL, "messages": HELLO, "max_tokens": 20, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(("limit", "tokens", "about"),
                         [("max_tokens", 7, "a cat"), ("max_completion_tokens", 5, "a dog")])
def test_sdk_chat_token_limit_ends_with_length(client: openai.OpenAI, limit: str, tokens: int,
                                               about: str) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Write a long story about {about}."}],
        temperature=0, **{limit: tokens},
    )
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == tokens


def test_same_seed_same_text_and_seeds_differ(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        out = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a fun fact."}],
            max_tokens=24, temperature=1.0, seed=seed,
        )
        return out.choices[0].message.content or ""

    assert run(7) == run(7)
    assert len({run(s) for s in (1, 2, 3)}) > 1


def test_temperature_zero_is_greedy_and_repeatable(client: openai.OpenAI) -> None:
    texts = {
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16,
                                       temperature=0).choices[0].message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_stop_string_and_long_stop_list(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from one to ten in words, comma separated."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40,
                                          temperature=0).choices[0].message.content or ""
    words = [w for w in full.replace(",", " ").split() if len(w) > 2]
    assert len(words) >= 3, full
    stop_word = words[2]
    cut = full.index(stop_word)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40,
                                         temperature=0, stop=stop_word)
    assert out.choices[0].message.content == full[:cut]
    assert out.choices[0].finish_reason == "stop"
    stops = ["zzz-not-there", "qqq", "@@@", "###", "%%%", stop_word, "!!!unused"]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40,
                                         temperature=0, stop=stops)
    assert out.choices[0].message.content == full[:cut]
    assert stop_word not in (out.choices[0].message.content or "")


def test_penalties_and_top_p_change_or_keep_output_sanely(client: openai.OpenAI) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Repeat: the the the the"}],
            "max_tokens": 30, "temperature": 0}
    plain = client.chat.completions.create(**base).choices[0].message.content
    penalised = client.chat.completions.create(
        **base, frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert plain != penalised
    nucleus = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=1.0, top_p=0.0001, seed=3)
    greedy = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8,
                                            temperature=0)
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content


def test_top_k_min_p_and_repetition_penalty_are_honoured(client: openai.OpenAI) -> None:
    """vLLM's and llama.cpp's extra sampling fields: top_k 1 or min_p 1 leave only the likeliest
    token, so a hot, seeded sample equals greedy; a repetition penalty changes greedy output."""
    greedy = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12,
                                            temperature=0).choices[0].message.content
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        for seed in (1, 2):
            hot = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12,
                                                 temperature=2.0, seed=seed, extra_body=extra)
            assert hot.choices[0].message.content == greedy, extra
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Repeat: the the the the"}],
            "max_tokens": 30, "temperature": 0}
    plain = client.chat.completions.create(**base).choices[0].message.content
    penalised = client.chat.completions.create(
        **base, extra_body={"repetition_penalty": 1.8}).choices[0].message.content
    assert plain != penalised


def test_content_as_list_of_text_parts_equals_plain_string(client: openai.OpenAI) -> None:
    text = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=10, temperature=0).choices[0].message.content
    parts = client.chat.completions.create(
        model=MODEL, max_tokens=10, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a "},
                                                {"type": "text", "text": "colour."}]}],
    ).choices[0].message.content
    assert text == parts


def test_system_message_and_history_reach_the_model(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=12,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "My name is Zorblax."},
            {"role": "assistant", "content": "Nice to meet you, Zorblax."},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    usage = out.usage
    assert usage is not None and usage.prompt_tokens > 30


def test_unknown_fields_ignored_and_explicit_nulls_accepted(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": HELLO, "max_tokens": 4, "temperature": None, "top_p": None,
        "n": None, "stop": None, "seed": None, "presence_penalty": None, "stream": None,
        "stream_options": None, "frequency_penalty": None, "user": None, "logprobs": None,
        "response_format": None, "tools": None, "tool_choice": None, "metadata": {"x": 1},
        "some_future_field": {"nested": True},
    })
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateChatCompletionResponse")


def test_streaming_sse_wire_format(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json={
        "model": MODEL, "messages": HELLO, "max_tokens": 12, "stream": True, "seed": 5,
    }) as r:
        assert r.status_code == 200
        events, _ = read_events(r)
    assert len(events) >= 3
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
        assert "usage" not in event
        assert event["object"] == "chat.completion.chunk"
        for choice in event["choices"]:
            assert choice["delta"].get("content") is not None
    assert len({e["id"] for e in events}) == 1
    assert len({e["created"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in e["choices"][0]["delta"] for e in events[1:])
    finishes = [e["choices"][0]["finish_reason"] for e in events]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])


def test_stream_include_usage(http: httpx.Client, client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 10, "seed": 11, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events, _ = read_events(r)
    last = events[-1]
    assert last["choices"] == []
    validate(last, "CreateChatCompletionStreamResponse")
    assert all(e["usage"] is None for e in events[:-1])
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, seed=11)
    assert plain.usage is not None
    assert last["usage"]["prompt_tokens"] == plain.usage.prompt_tokens
    assert last["usage"]["completion_tokens"] == plain.usage.completion_tokens
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == plain.choices[0].message.content


def test_sdk_streaming_matches_plain_response(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": HELLO, "max_tokens": 16, "seed": 21}
    plain = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == plain.choices[0].message.content


def test_n_choices_count_usage_once_per_prompt(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    single = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, seed=4)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, n=3,
                                         seed=4)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.finish_reason for c in out.choices] == ["length"] * 3
    assert out.usage is not None and single.usage is not None
    assert out.usage.completion_tokens == 24
    assert out.usage.prompt_tokens == single.usage.prompt_tokens
    assert out.choices[0].message.content == single.choices[0].message.content


def test_repeated_long_prefix_is_reused_and_reported(client: openai.OpenAI) -> None:
    system = "You are a careful assistant. " + "Always answer in full sentences. " * 40
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "What is two plus two?"}]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, temperature=0)
    messages[1]["content"] = "What is three plus three?"
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2,
                                         temperature=0)
    assert out.usage is not None and out.usage.prompt_tokens_details is not None
    cached = out.usage.prompt_tokens_details.cached_tokens or 0
    # The questions differ in their last ~10 tokens; reuse stops at most 64 short of that.
    assert out.usage.prompt_tokens - 10 - 64 <= cached < out.usage.prompt_tokens
    fresh = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Unrelated question?"}], max_tokens=2)
    assert fresh.usage is not None and fresh.usage.prompt_tokens_details is not None
    assert (fresh.usage.prompt_tokens_details.cached_tokens or 0) < cached


@pytest.mark.backends("llamacpp")
def test_prefix_reused_mid_chunk_gives_the_fresh_text(client: openai.OpenAI) -> None:
    """Cells reused from another request's prompt (ending anywhere, not on a prompt-chunk
    boundary) must give the text a fresh evaluation gives, token for token, when sampling."""
    system = f"Session {uuid.uuid4().hex}. " + "Answer briefly and think about the sea. " * 20

    def ask(question: str) -> ChatCompletion:
        return client.chat.completions.create(
            model=MODEL, max_tokens=24, temperature=0.8, seed=9,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": question}])

    fresh = ask("Write a story about a train.")
    ask("Write a story about a train and a dog.")
    again = ask("Write a story about a train.")
    assert fresh.usage is not None and fresh.usage.prompt_tokens_details is not None
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert (fresh.usage.prompt_tokens_details.cached_tokens or 0) < 64  # nobody had the session
    cached = again.usage.prompt_tokens_details.cached_tokens or 0
    assert cached > 128 and cached % 128 != 0
    assert again.choices[0].message.content == fresh.choices[0].message.content


@pytest.mark.backends("llamacpp")
def test_a_regenerated_reply_recomputes_only_the_last_prompt_token(client: openai.OpenAI) -> None:
    """Asked again (regenerate, retry), a long prompt keeps every cached cell but its last
    token's, the only one a fresh evaluation also computes alone, and gets the fresh
    evaluation's log-probabilities bit for bit (the prompt's last chunk is tiled, 64+ rows)."""
    system = "You are the regenerate test's narrator. " + "Think about the sea. " * 40

    def ask() -> ChatCompletion:
        return client.chat.completions.create(
            model=MODEL, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": "Write a story about a boat."}])

    def logprobs(out: ChatCompletion) -> list[list[tuple[str, float]]]:
        assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content
        return [[(t.token, t.logprob) for t in entry.top_logprobs]
                for entry in out.choices[0].logprobs.content]

    fresh, again = ask(), ask()
    assert fresh.usage is not None and fresh.usage.prompt_tokens_details is not None
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert fresh.usage.prompt_tokens % 128 >= 64  # the last chunk is a tiled one
    assert (fresh.usage.prompt_tokens_details.cached_tokens or 0) < 64  # nobody had the session
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert logprobs(again) == logprobs(fresh)
    assert again.choices[0].message.content == fresh.choices[0].message.content


def _ram_hit_tokens(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'lokal_prompt_cache_ram_hit_tokens_total{{model="{MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no lokal_prompt_cache_ram_hit_tokens_total series")


@pytest.mark.backends("llamacpp")
def test_a_prompt_evicted_from_every_slot_comes_back_from_ram(
        client: openai.OpenAI, http: httpx.Client) -> None:
    """More distinct long prompts than slots push the first one out of its slot; asked again,
    its KV comes back from the RAM prompt cache and gives the logits a fresh evaluation gave.
    One token each, so every slot holds just a prompt and the oldest one is the one replaced."""
    session = uuid.uuid4().hex

    def ask(topic: int) -> list[tuple[str, float]]:
        system = f"Session {session}, topic {topic}. " + "Answer in a few words. " * 30
        out = client.chat.completions.create(
            model=MODEL, max_tokens=1, logprobs=True, top_logprobs=5,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": "Name a colour."}])
        assert out.usage is not None and out.usage.prompt_tokens_details is not None
        cached.append(out.usage.prompt_tokens_details.cached_tokens or 0)
        prompt_tokens.append(out.usage.prompt_tokens)
        assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content
        return [(t.token, t.logprob) for t in out.choices[0].logprobs.content[0].top_logprobs]

    cached: list[int] = []
    prompt_tokens: list[int] = []
    first = ask(0)
    for topic in range(1, 17):  # 8 slots: each is taken over twice
        ask(topic)
    before = _ram_hit_tokens(http)
    again = ask(0)
    # All but the last token (tiled last chunk) or the last two (see cache.last_token_alone).
    assert cached[0] < 64 and cached[-1] >= prompt_tokens[-1] - 2
    assert _ram_hit_tokens(http) - before == cached[-1]  # restored from RAM, not a slot
    assert again == first  # bit-identical log-probabilities
