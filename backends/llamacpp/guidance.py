"""Constraints as llguidance matchers over the model's own vocabulary: JSON schemas (numeric
bounds, formats, patterns, $ref...), any JSON object, tool-call schemas and grammars, compiled
once per request within resource limits, a token mask per decoding step.

llguidance is the engine vLLM, SGLang and llama.cpp (LLAMA_LLGUIDANCE) use; its llama.cpp bridge
(`llguidance.llamacpp.lltokenizer_from_vocab`) builds the token trie from the vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import llama_cpp
import numpy as np

from lokal.backends.base import Constraint
from lokal.backends.errors import InvalidParameter
from lokal.backends.json_schema import CALL_WHITESPACE, JSON_WHITESPACE, closed
from lokal.backends.spec import GrammarLimits
from lokal.backends.tool_formats import CallTrigger

logger = logging.getLogger(__name__)


def _parser_limits(limits: GrammarLimits) -> Any:
    """llguidance's limits object; errors never echo the parser's state (verbose_errors)."""
    import llguidance

    return llguidance.LLParserLimits(**limits.model_dump(), verbose_errors=False)


JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": JSON_WHITESPACE}
CALL_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": CALL_WHITESPACE}
LOOSEN_MAX_TOOLS = 64
"""Tools a best-effort constraint compiles one by one to find the ones it cannot enforce."""
# What may come between a call's opener and its object (`<tool_call>` then a newline).
_CALL_LEAD = r"/[\x20\x0A]{0,2}/"
_UNIMPLEMENTED = re.compile(r'Unimplemented keys: \[(.*?)\]')
# Where JSON Schema puts maps of names to subschemas: their keys are names, not keywords.
_NAME_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def _keyword_paths(schema: Any, keyword: str, where: str = "") -> Iterator[str]:
    """JSON pointers of the subschemas that use `keyword`."""
    if isinstance(schema, Mapping):
        if keyword in schema:
            yield where or "/"
        for key, value in schema.items():
            if key in _NAME_MAPS and isinstance(value, Mapping):
                for name, sub in value.items():
                    yield from _keyword_paths(sub, keyword, f"{where}/{key}/{name}")
            elif key not in ("enum", "const", "default", "examples"):
                yield from _keyword_paths(value, keyword, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            yield from _keyword_paths(item, keyword, f"{where}/{i}")


def _param(constraint: Constraint) -> str:
    return "tools" if constraint.kind == "tool_calls" else "response_format"


def _refusal(constraint: Constraint, error: str) -> InvalidParameter:
    """A 400 for what llguidance refused: the keyword and its path when it is one it does not
    implement, the limit when one was hit."""
    param = _param(constraint)
    found = _UNIMPLEMENTED.search(error)
    if found and constraint.schema is not None:
        keywords = json.loads(f"[{found.group(1)}]")
        keyword = str(keywords[0]) if keywords else "?"
        where = next(_keyword_paths(constraint.schema, keyword), "/")
        return InvalidParameter(
            f"JSON schema keyword '{keyword}' at {where} cannot be enforced (the constraint "
            "engine does not implement it); remove it or use a supported equivalent.",
            param=param)
    if "limit" in error or "too big" in error or "too complex" in error.lower():
        return InvalidParameter(f"The constraint is too large or complex to enforce: {error}",
                                param=param)
    return InvalidParameter(f"The constraint cannot be enforced: {error}", param=param)


class Guidance:
    """One model's llguidance tokenizer (built on first use, ~0.3 s for 49k tokens) and the
    matchers made from it."""

    def __init__(self, vocab: Any, n_vocab: int, limits: GrammarLimits | None = None) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._limits = _parser_limits(limits or GrammarLimits())
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from llguidance.llamacpp import lltokenizer_from_vocab

                eog = [t for t in range(self._n_vocab)
                       if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
                self._tokenizer = lltokenizer_from_vocab(self._vocab, n_vocab=self._n_vocab,
                                                         eos_token=eog or None)
            return self._tokenizer

    def grammar(self, constraint: Constraint) -> str:
        """The llguidance grammar for `constraint` (not yet checked)."""
        from llguidance import LLMatcher, grammar_from

        if constraint.kind == "grammar":
            if not constraint.grammar:
                raise InvalidParameter("empty grammar", param="grammar")
            try:
                return str(grammar_from("gbnf", constraint.grammar))
            except ValueError as exc:
                raise InvalidParameter(str(exc), param="grammar") from exc
        schema: Any = {"type": "object"} if constraint.kind == "json_object" \
            else constraint.schema
        if schema is None:
            raise InvalidParameter("a JSON schema is required", param=_param(constraint))
        try:
            if constraint.lazy:  # the call object, after what may follow its opener
                call = json.dumps({**closed(schema), "x-guidance": CALL_OPTIONS})
                return str(LLMatcher.grammar_from_lark(
                    f"start: {_CALL_LEAD} call\ncall: %json {call}"))
            return str(LLMatcher.grammar_from_json_schema(json.dumps(closed(schema)),
                                                          overrides=JSON_OPTIONS))  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise InvalidParameter(f"The JSON schema is not valid: {exc}",
                                   param=_param(constraint)) from exc

    def matchers(self, constraint: Constraint, n: int) -> list[Any]:
        """`n` fresh matchers for `constraint`, or InvalidParameter (400) when it cannot be
        enforced, exceeds the limits, or admits no output at all. A best-effort constraint
        gives the tools it cannot enforce any object as arguments instead. Slow (call off
        the loop)."""
        try:
            matcher = self._matcher(constraint)
        except InvalidParameter:
            if not constraint.best_effort:
                raise
            try:
                matcher = self._matcher(self._loosened(constraint))
            except InvalidParameter:  # too large together: every call's arguments loose
                matcher = self._matcher(self._loosened(constraint, everything=True))
        return [matcher, *(matcher.deep_copy() for _ in range(n - 1))]

    def _matcher(self, constraint: Constraint) -> Any:
        from llguidance import LLMatcher

        tokenizer = self.tokenizer()
        limits = self._limits
        grammar = self.grammar(constraint)
        checks = [grammar]
        schema = constraint.schema
        if schema is not None and "oneOf" in json.dumps(schema) and closed(schema) != schema:
            # Closed branches may look disjoint where the sent ones overlap: exactly one must
            # match the schema as sent, so that one must compile (be proven disjoint) too.
            checks.append(self._as_sent(constraint))
        for text in checks:
            is_error, messages = LLMatcher.validate_grammar_with_warnings(text, tokenizer,
                                                                          limits=limits)
            if is_error:
                raise _refusal(constraint, messages[0] if messages else "invalid grammar")
        matcher = LLMatcher(tokenizer, grammar, log_level=0, limits=limits)
        if not matcher.is_error():
            matcher.compute_bitmask()  # the first step: a schema nothing satisfies fails here
        if matcher.is_error():
            raise _refusal(constraint, matcher.get_error().splitlines()[0])
        return matcher

    def _enforceable(self, constraint: Constraint) -> bool:
        try:
            self._matcher(constraint)
        except InvalidParameter:
            return False
        return True

    @staticmethod
    def _as_sent(constraint: Constraint) -> str:
        """The grammar of the schema exactly as sent (not closed)."""
        from llguidance import LLMatcher

        return str(LLMatcher.grammar_from_json_schema(json.dumps(constraint.schema),
                                                      overrides=JSON_OPTIONS))  # type: ignore[arg-type]

    def _loosened(self, constraint: Constraint, everything: bool = False) -> Constraint:
        """`constraint` with any object as the arguments of each tool it cannot enforce (of
        every tool with `everything`)."""
        assert constraint.schema is not None
        schema = dict(constraint.schema)
        calls = list(schema["anyOf"]) if "anyOf" in schema else [schema]
        # One compile per tool finds the ones to loosen: a request with more tools than this
        # could make that cost what it likes, so all of its calls' arguments are loosened.
        everything = everything or len(calls) > LOOSEN_MAX_TOOLS
        kept = []
        for call in calls:
            if everything or not self._enforceable(dataclasses.replace(
                    constraint, schema=call, best_effort=False)):
                name = call["properties"]["name"]
                logger.info("tool %s: its schema cannot be enforced; its calls' arguments are "
                            "only held to be a JSON object", json.dumps(name)[:80])
                call = {**call, "properties": {"name": name, "arguments": {"type": "object"}}}
            kept.append(call)
        loose = kept[0] if len(kept) == 1 else {"anyOf": kept}
        return dataclasses.replace(constraint, schema=loose, best_effort=False)


class LazyCall:
    """One choice's tool calls in auto mode: the text is free until the model begins a call,
    which is then held to the offered tools' schemas until it closes."""

    def __init__(self, prototype: Any, trigger: CallTrigger,
                 tokenize: Callable[[str], list[int]]) -> None:
        self._prototype = prototype
        self._trigger: CallTrigger | None = trigger
        self._tokenize = tokenize

    def begun(self, text: str) -> Any | None:
        """Feed the text just generated; a matcher, primed with the call's text so far, once
        that text begins a call."""
        if self._trigger is None:
            return None
        call = self._trigger.feed(text)
        if call is None:
            return None
        matcher = self._prototype.deep_copy()
        if not matcher.consume_tokens(self._tokenize(call)) or matcher.is_error():
            # The model began the call in a way the grammar does not take (odd spacing): the
            # rest of this reply is left free rather than forced off its course.
            logger.info("a tool call began outside the call grammar; left unconstrained")
            self._trigger = None
            return None
        if matcher.is_accepting():
            self._trigger.closed()
            return None
        return matcher

    def closed(self) -> None:
        """The call's matcher accepted: look for the next call."""
        if self._trigger is not None:
            self._trigger.closed()


def apply_mask(matcher: Any, logits: np.ndarray[Any, Any]) -> None:
    """Set the logits of every token `matcher` does not allow now to -inf (in place)."""
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8),
                         bitorder="little")[:logits.shape[0]]
    logits[bits == 0] = -np.inf
