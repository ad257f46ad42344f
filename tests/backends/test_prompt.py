"""The prompt front end both engines share, over a scripted tokenizer: chat template and BOS,
token ids, logit_bias, n, fill-in-the-middle and the context budget, with today's errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    GenerationRequest,
    SamplingParams,
    TextPrompt,
    TokenPrompt,
)
from lokal.backends.errors import ContextLengthExceeded, InvalidParameter
from lokal.backends.prompt import PromptFrontEnd

BOS, EOS, PRE, SUF, MID = 1, 2, 3, 4, 5
SPECIALS = {"<s>": BOS, "</s>": EOS, "<pre>": PRE, "<suf>": SUF, "<mid>": MID}
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


class CharTokenizer:
    """One id per character (its code point); the specials written in a text are one id each.
    Records every encode call, to show what the front end asked for."""

    bos_text = "<s>"
    eos_text = "</s>"

    def __init__(self, *, fim: bool = True, vocab_size: int = 1000) -> None:
        self.vocab_size = vocab_size
        self.fim_ids = (PRE, SUF, MID) if fim else None
        self.calls: list[tuple[str, bool]] = []

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        self.calls.append((text, add_special))
        ids = [BOS] if add_special else []
        while text:
            special = next((s for s in SPECIALS if text.startswith(s)), None)
            if special is not None:
                ids.append(SPECIALS[special])
                text = text[len(special):]
            else:
                ids.append(ord(text[0]))
                text = text[1:]
        return ids

    def special_prefix(self) -> list[int]:
        return [BOS]


def front(tokenizer: CharTokenizer | None = None, *, template: str | None = TEMPLATE,
          configured: str | None = None, context: int = 32,
          max_n: int | None = None) -> PromptFrontEnd:
    return PromptFrontEnd(tokenizer or CharTokenizer(), model="tiny", context_length=context,
                          configured_template=configured, own_template=template, max_n=max_n)


def req(prompt: Any, **kw: Any) -> GenerationRequest:
    return GenerationRequest("r", prompt, **kw)


def chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_a_text_prompt_gets_the_tokenizers_bos() -> None:
    got = front().prepare(req(TextPrompt("hi"), sampling=SamplingParams(max_tokens=4)))
    assert got.token_ids == [BOS, *chars("hi")] and got.max_tokens == 4


def test_a_chat_prompt_renders_the_template_and_adds_bos_once() -> None:
    tokenizer = CharTokenizer()
    chat = ChatPrompt((ChatMessage("user", "hi"),))
    assert front(tokenizer).tokens(req(chat)) == [BOS, *chars("[user]hi[assistant]")]
    assert tokenizer.calls == [("[user]hi[assistant]", True)]
    # A template that writes BOS itself: the tokenizer must not add a second one.
    opened = front(tokenizer, template="{{ bos_token }}" + TEMPLATE)
    assert opened.tokens(req(chat)) == [BOS, *chars("[user]hi[assistant]")]
    assert tokenizer.calls[-1] == ("<s>[user]hi[assistant]", False)


def test_continue_final_and_no_generation_prompt_reach_the_template() -> None:
    chat = ChatPrompt((ChatMessage("user", "hi"), ChatMessage("assistant", "Sure")),
                      add_generation_prompt=False, continue_final=True)
    assert front().tokens(req(chat)) == [BOS, *chars("[user]hi[assistant]Sure")]


def test_the_configured_template_wins_and_a_model_without_one_gets_chatml(
        caplog: pytest.LogCaptureFixture) -> None:
    configured = front(configured="{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    assert configured.template_source == "config"
    assert configured.tokens(req(ChatPrompt((ChatMessage("user", "x"),)))) == [
        BOS, *chars("<x>")]
    assert front().template_source == "model"
    with caplog.at_level(logging.WARNING, logger="lokal.backends.prompt"):
        bare = front(template=None)
    assert bare.template_source == "fallback" and bare.template.is_fallback
    assert "tiny has no chat template" in caplog.text
    assert front(template="{{ tools }}<tool_call>").tool_format == "hermes"


def test_token_ids_pass_as_they_are_and_must_be_in_the_vocabulary() -> None:
    tokenizer = CharTokenizer(vocab_size=100)
    assert front(tokenizer).tokens(req(TokenPrompt((7, 99, 0)))) == [7, 99, 0]
    for bad in (100, -1):
        with pytest.raises(InvalidParameter) as info:
            front(tokenizer).prepare(req(TokenPrompt((5, bad))))
        assert info.value.param == "prompt"
        assert info.value.message == f"token id {bad} is outside the vocabulary (0..99)"
    assert tokenizer.calls == []


def test_logit_bias_ids_must_be_in_the_vocabulary() -> None:
    front(CharTokenizer(vocab_size=100)).prepare(
        req(TextPrompt("a"), sampling=SamplingParams(logit_bias={99: 1.0})))
    with pytest.raises(InvalidParameter) as info:
        front(CharTokenizer(vocab_size=100)).prepare(
            req(TextPrompt("a"), sampling=SamplingParams(logit_bias={3: 1.0, 100: -1.0})))
    assert info.value.param == "logit_bias"
    assert info.value.message == "logit_bias token 100 is outside the vocabulary"


def test_n_is_at_least_one_and_at_most_the_engines_limit() -> None:
    tokenizer = CharTokenizer()
    with pytest.raises(InvalidParameter) as info:
        front(tokenizer).prepare(req(TextPrompt("a"), n=0))
    assert (info.value.param, info.value.message) == ("n", "n must be at least 1")
    with pytest.raises(InvalidParameter) as info:
        front(tokenizer, max_n=2).prepare(req(TextPrompt("a"), n=3))
    assert (info.value.param, info.value.message) == (
        "n", "n=3 is more than this model's 2 parallel slots")
    assert tokenizer.calls == []  # refused before any tokenizing
    assert front(max_n=2).prepare(req(TextPrompt("a"), n=2)).token_ids == [BOS, ord("a")]
    assert front().prepare(req(TextPrompt("a"), n=64)).token_ids == [BOS, ord("a")]


def test_fim_lays_out_prefix_suffix_middle_from_the_tokenizers_ids() -> None:
    tokenizer = CharTokenizer()
    fim = front(tokenizer)
    assert fim.fim
    assert fim.tokens(req(TextPrompt("ab"), suffix="cd")) == [
        BOS, PRE, *chars("ab"), SUF, *chars("cd"), MID]
    assert ("ab", False) in tokenizer.calls and ("cd", False) in tokenizer.calls
    # Specials written in the text are read as such, as in any text prompt.
    assert fim.tokens(req(TextPrompt("a</s>"), suffix="")) == [BOS, PRE, ord("a"), EOS, SUF,
                                                                MID]
    assert fim.tokens(req(TokenPrompt((70, 71)), suffix="z")) == [
        BOS, PRE, 70, 71, SUF, ord("z"), MID]
    with pytest.raises(InvalidParameter) as info:
        fim.tokens(req(TokenPrompt((70, 1000)), suffix="z"))
    assert info.value.param == "prompt"


def test_fim_is_refused_for_chat_and_for_a_model_without_fim_tokens() -> None:
    with pytest.raises(InvalidParameter) as info:
        front().prepare(req(ChatPrompt((ChatMessage("user", "hi"),)), suffix="z"))
    assert (info.value.param, info.value.message) == (
        "suffix", "'suffix' needs a text or token prompt")
    plain = CharTokenizer(fim=False)
    assert not front(plain).fim
    for call in (front(plain).prepare, front(plain).tokens):
        with pytest.raises(InvalidParameter) as info:
            call(req(TextPrompt("a"), suffix="z"))
        assert info.value.param == "suffix"
        assert "'tiny'" in info.value.message and "fill-in-the-middle" in info.value.message
    assert plain.calls == []


def test_the_budget_is_max_tokens_or_what_the_context_leaves() -> None:
    ten = TextPrompt("x" * 9)  # BOS + 9 = 10 tokens in a context of 32
    assert front().prepare(req(ten)).max_tokens == 22
    assert front().prepare(req(ten, sampling=SamplingParams(max_tokens=22))).max_tokens == 22
    with pytest.raises(ContextLengthExceeded) as info:
        front().prepare(req(ten, sampling=SamplingParams(max_tokens=23)))
    assert (info.value.prompt_tokens, info.value.max_tokens, info.value.context_length) == (
        10, 23, 32)
    assert info.value.param == "max_tokens"
    assert info.value.message == (
        "This model's maximum context length is 32 tokens. However, you requested 33 tokens "
        "(10 in the prompt, 23 for the completion). Please reduce the prompt or max_tokens.")
    with pytest.raises(ContextLengthExceeded) as info:
        front().prepare(req(TextPrompt("x" * 31)))
    assert info.value.param == "messages"
    assert info.value.message == (
        "This model's maximum context length is 32 tokens, but the prompt has 32 tokens, "
        "leaving no room for a completion.")


def test_a_max_tokens_ceiling_generates_to_the_end_of_the_context() -> None:
    """Anthropic's and the Responses API's max_tokens: more than the room left is a ceiling,
    not an error; a prompt that leaves no room at all is still refused."""
    ten = TextPrompt("x" * 9)  # BOS + 9 = 10 tokens in a context of 32
    ceiling = SamplingParams(max_tokens=32000, max_tokens_ceiling=True)
    assert front().prepare(req(ten, sampling=ceiling)).max_tokens == 22
    within = SamplingParams(max_tokens=5, max_tokens_ceiling=True)
    assert front().prepare(req(ten, sampling=within)).max_tokens == 5
    with pytest.raises(ContextLengthExceeded) as info:
        front().prepare(req(TextPrompt("x" * 31), sampling=ceiling))
    assert info.value.param == "messages"


def test_an_empty_prompt_is_refused_but_counts_zero() -> None:
    with pytest.raises(InvalidParameter) as info:
        front().prepare(req(TokenPrompt(())))
    assert (info.value.param, info.value.message) == ("prompt", "the prompt is empty")
    assert front().tokens(req(TokenPrompt(()))) == []


def test_count_and_prepare_agree() -> None:
    for request in (req(TextPrompt("hello")), req(TokenPrompt((9, 8))),
                    req(ChatPrompt((ChatMessage("user", "hi"),))),
                    req(TextPrompt("a"), suffix="b")):
        assert front().tokens(request) == front().prepare(request).token_ids
