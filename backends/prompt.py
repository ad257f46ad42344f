"""The prompt front end every engine shares: a request's prompt as the token ids the engine runs
(chat template, BOS, fill-in-the-middle), checked against the vocabulary, n and the context,
behind a small tokenizer protocol that each engine adapts its own tokenizer to."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from lokal.backends.base import ChatPrompt, GenerationRequest, TextPrompt, TokenPrompt
from lokal.backends.chat_template import ChatTemplate, template_source
from lokal.backends.errors import ContextLengthExceeded, InvalidParameter
from lokal.backends.fim import no_fim
from lokal.backends.tool_formats import ModelFormat, format_for_template

logger = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """What the front end needs of an engine's tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Valid token ids are 0 .. vocab_size - 1."""
        ...

    @property
    def bos_text(self) -> str:
        """The BOS token as text ("" if none): chat templates write it themselves."""
        ...

    @property
    def eos_text(self) -> str: ...

    @property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle prefix, suffix and middle tokens; None: the model has none."""
        ...

    def encode(self, text: str, *, add_special: bool) -> list[int]:
        """`text` as ids, special tokens written in it read as such. `add_special`: with what
        the model's tokenizer adds to every text (its BOS, where the model wants one)."""
        ...

    def special_prefix(self) -> list[int]:
        """What `add_special` puts before a text: how a FIM prompt starts."""
        ...


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    """A request's prompt as the engine runs it, and how many tokens it may generate."""

    token_ids: list[int]
    max_tokens: int


class PromptFrontEnd:
    """One model's prompt front end: its chat template (the model's own, or the YAML's, or
    lokal's ChatML fallback) over its tokenizer, and the limits a request must fit in.

    `max_n`: the most choices one request may ask for (llama.cpp's parallel slots); None: no
    limit of the engine's own. Tokenizing is CPU work: engines call `prepare` and `tokens` off
    the event loop."""

    def __init__(self, tokenizer: Tokenizer, *, model: str, context_length: int,
                 configured_template: str | None, own_template: str | None,
                 max_n: int | None = None) -> None:
        source = configured_template or own_template
        if source is None:
            logger.warning("model %s has no chat template; using lokal's ChatML fallback", model)
        self.template = ChatTemplate(source, bos_token=tokenizer.bos_text,
                                     eos_token=tokenizer.eos_text)
        self.template_source: Literal["model", "config", "fallback"] = template_source(
            configured_template, own_template)
        self.tool_format: ModelFormat = format_for_template(source)
        self._tokenizer = tokenizer
        self._model = model
        self._context_length = context_length
        self._max_n = max_n

    @property
    def fim(self) -> bool:
        """Whether `suffix` (fill-in-the-middle) can be honoured."""
        return self._tokenizer.fim_ids is not None

    def prepare(self, request: GenerationRequest) -> PreparedPrompt:
        """The request's prompt tokens and its generation budget, or the caller fault that
        stops it: InvalidParameter (n, suffix, logit_bias, token ids, the template, an empty
        prompt) or ContextLengthExceeded."""
        self._check(request)
        tokens = self.tokens(request)
        if not tokens:
            raise InvalidParameter("the prompt is empty", param="prompt")
        sampling = request.sampling
        return PreparedPrompt(tokens, self._budget(len(tokens), sampling.max_tokens,
                                                   sampling.max_tokens_ceiling))

    def tokens(self, request: GenerationRequest) -> list[int]:
        """The ids the engine runs for `request`'s prompt: what count_tokens reports."""
        if request.suffix is not None:
            return self._fim_tokens(request, request.suffix)
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt):
            return self._checked_ids(prompt.token_ids)
        if isinstance(prompt, ChatPrompt):
            text = self.template.render(prompt.messages, tools=prompt.tools,
                                        add_generation_prompt=prompt.add_generation_prompt,
                                        continue_final=prompt.continue_final)
            # The template may already open with BOS; never add a second one.
            bos = self.template.bos_token
            return self._tokenizer.encode(text, add_special=not (bos and text.startswith(bos)))
        assert isinstance(prompt, TextPrompt)
        return self._tokenizer.encode(prompt.text, add_special=True)

    def _check(self, request: GenerationRequest) -> None:
        if request.suffix is not None:
            self._fim_ids()
        if request.n < 1:
            raise InvalidParameter("n must be at least 1", param="n")
        if self._max_n is not None and request.n > self._max_n:
            raise InvalidParameter(
                f"n={request.n} is more than this model's {self._max_n} parallel slots",
                param="n")
        vocab = self._tokenizer.vocab_size
        bad = [t for t in request.sampling.logit_bias if not 0 <= t < vocab]
        if bad:
            raise InvalidParameter(f"logit_bias token {bad[0]} is outside the vocabulary",
                                   param="logit_bias")

    def _checked_ids(self, ids: Sequence[int]) -> list[int]:
        vocab = self._tokenizer.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidParameter(
                f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        return list(ids)

    def _fim_ids(self) -> tuple[int, int, int]:
        ids = self._tokenizer.fim_ids
        if ids is None:
            raise no_fim(self._model)
        return ids

    def _fim_tokens(self, request: GenerationRequest, suffix: str) -> list[int]:
        """Prefix-suffix-middle from the vocabulary's own FIM tokens:
        [BOS] <fim_prefix> prompt <fim_suffix> suffix <fim_middle>; the model writes the middle."""
        pre, suf, mid = self._fim_ids()
        prompt = request.prompt
        if isinstance(prompt, ChatPrompt):
            raise InvalidParameter("'suffix' needs a text or token prompt", param="suffix")
        tokenizer = self._tokenizer
        before = self._checked_ids(prompt.token_ids) if isinstance(prompt, TokenPrompt) \
            else tokenizer.encode(prompt.text, add_special=False)
        after = tokenizer.encode(suffix, add_special=False)
        return [*tokenizer.special_prefix(), pre, *before, suf, *after, mid]

    def _budget(self, prompt_tokens: int, max_tokens: int | None, ceiling: bool = False) -> int:
        """The tokens the request may generate: max_tokens, or all the room the prompt leaves
        (also when max_tokens is only a `ceiling` the prompt leaves no room for)."""
        n_ctx = self._context_length
        if max_tokens is None or (ceiling and prompt_tokens + max_tokens > n_ctx):
            if prompt_tokens >= n_ctx:
                raise ContextLengthExceeded(prompt_tokens, None, n_ctx)
            return n_ctx - prompt_tokens
        if prompt_tokens + max_tokens > n_ctx:
            raise ContextLengthExceeded(prompt_tokens, max_tokens, n_ctx)
        return max_tokens
