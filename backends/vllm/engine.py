"""The only module that imports vLLM: AsyncLLM behind a small engine-neutral interface.

VllmBackend talks to `Engine`; tests give it a fake one, so the adapter's contract is checked
in the fast suite where vLLM is not installed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from lokal.backends.base import TokenLogprob, TopLogprob
from lokal.backends.errors import BackendUnavailable, EngineFailure, InvalidParameter

logger = logging.getLogger(__name__)

StructuredKind = Literal["json", "json_object", "grammar"]


@dataclass(frozen=True, slots=True)
class Structured:
    """A structured-output constraint as vLLM's StructuredOutputsParams takes it."""

    kind: StructuredKind
    value: Mapping[str, Any] | str | None = None


@dataclass(frozen=True, slots=True)
class EngineParams:
    """One engine request's sampling, already checked and completed by the backend."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    structured: Structured | None = None
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely."""


@dataclass(frozen=True, slots=True)
class EngineDelta:
    """New output of one engine request; `finish_reason` is vLLM's own word, set at the end."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    cached_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_sequence: str | None = None
    """vLLM's stop_reason when it is one of the request's stop strings."""


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def get_vocab(self) -> dict[str, int]: ...


class Engine(Protocol):
    tokenizer: Tokenizer
    vocab_size: int
    max_num_seqs: int
    chat_template: str | None
    bos_token: str
    eos_token: str

    def generate(self, prompt: list[int], params: EngineParams,
                 request_id: str) -> AsyncIterator[EngineDelta]: ...

    async def abort(self, request_ids: list[str]) -> None: ...

    @property
    def errored(self) -> bool:
        """The engine core died; no request can be served any more."""
        ...

    def shutdown(self) -> None: ...


class VllmEngine:
    """vLLM's in-process AsyncLLM (its engine core runs in a child process)."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        tokenizer: Any = llm.get_tokenizer()
        self.tokenizer: Tokenizer = tokenizer
        self.vocab_size = int(llm.model_config.get_vocab_size())
        self.max_num_seqs = int(llm.vllm_config.scheduler_config.max_num_seqs)
        template = getattr(tokenizer, "chat_template", None)
        self.chat_template = template if isinstance(template, str) else None
        self.bos_token = str(getattr(tokenizer, "bos_token", None) or "")
        self.eos_token = str(getattr(tokenizer, "eos_token", None) or "")

    def _sampling_params(self, params: EngineParams) -> Any:
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import (
            RequestOutputKind,
            SamplingParams,
            StructuredOutputsParams,
        )

        structured = None
        try:
            if params.structured is not None:
                kind, value = params.structured.kind, params.structured.value
                if kind == "json":
                    schema = dict(value) if isinstance(value, Mapping) else value
                    structured = StructuredOutputsParams(json=schema)
                elif kind == "json_object":
                    structured = StructuredOutputsParams(json_object=True)
                else:
                    structured = StructuredOutputsParams(grammar=str(value))
            return SamplingParams(
                max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, seed=params.seed, stop=list(params.stop),
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                top_k=params.top_k,
                min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                logit_bias=dict(params.logit_bias) or None,
                structured_outputs=structured, logprobs=params.logprobs,
                output_kind=RequestOutputKind.DELTA,
            )
        except (VLLMValidationError, ValueError, TypeError) as exc:
            raise InvalidParameter(f"vLLM rejected the request: {exc}",
                                   param=getattr(exc, "parameter", None)) from exc

    async def generate(self, prompt: list[int], params: EngineParams,
                       request_id: str) -> AsyncIterator[EngineDelta]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import tokens_input

        sampling = self._sampling_params(params)
        try:
            async for out in self._llm.generate(tokens_input(prompt), sampling, request_id):
                completion = out.outputs[0]
                token_ids = tuple(completion.token_ids)
                logprobs = () if params.logprobs is None else _logprobs(
                    token_ids, completion.logprobs or (), params.logprobs)
                stop = completion.stop_reason
                yield EngineDelta(completion.text, token_ids, completion.finish_reason,
                                  out.num_cached_tokens or 0, logprobs,
                                  stop if isinstance(stop, str) else None)
        except VLLMClientError as exc:
            raise InvalidParameter(f"vLLM rejected the request: {exc}",
                                   param=getattr(exc, "parameter", None)) from exc
        except InvalidParameter:
            raise
        except Exception as exc:
            raise EngineFailure(f"vLLM failed: {type(exc).__name__}: {exc}") from exc

    async def abort(self, request_ids: list[str]) -> None:
        await self._llm.abort(request_ids)

    @property
    def errored(self) -> bool:
        return bool(self._llm.errored)

    def shutdown(self) -> None:
        self._llm.shutdown()


def _logprobs(token_ids: tuple[int, ...], steps: Any, top_n: int) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token {token id: Logprob} maps (the sampled token plus the top_n most likely,
    from the raw logits) as engine-neutral entries."""
    def entry(token_id: int, lp: Any) -> tuple[str, tuple[int, ...], float]:
        text = lp.decoded_token or ""
        # A structured-output mask makes excluded tokens -inf, which JSON cannot carry;
        # OpenAI reports such tokens as -9999.0.
        return text, tuple(text.encode("utf-8")), max(float(lp.logprob), -9999.0)

    out = []
    for token_id, step in zip(token_ids, steps, strict=False):
        ranked = sorted(((t, lp) for t, lp in step.items()
                         if lp.rank is not None and math.isfinite(lp.logprob)),
                        key=lambda item: int(item[1].rank))[:top_n]
        top = tuple(TopLogprob(*entry(t, lp)) for t, lp in ranked)
        out.append(TokenLogprob(*entry(token_id, step[token_id]), top=top))
    return tuple(out)


def resolve_model(model: str, base_dir: Path | None, must_have: str = "config.json") -> str:
    """A path (absolute, or relative to the YAML's folder) must exist; anything else is a hub id."""
    if not model.startswith((".", "/", "~")):
        return model
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not (path / must_have).is_file():
        raise BackendUnavailable(
            f"vLLM model directory {path} has no {must_have} (for the bundled model, "
            "`make vllm-model` converts its GGUF)")
    return str(path.resolve())


def load_engine(engine_args: Mapping[str, Any]) -> Engine:
    """Build AsyncLLM from engine arguments; vLLM itself validates every one of them."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    logger.info("starting vLLM with %s", ", ".join(f"{k}={v!r}" for k, v in engine_args.items()))
    given = dict(engine_args)
    if isinstance(given.get("structured_outputs_config"), Mapping):
        from vllm.config import StructuredOutputsConfig

        given["structured_outputs_config"] = StructuredOutputsConfig(
            **given["structured_outputs_config"])
    try:
        args = AsyncEngineArgs(**given)
        config = args.create_engine_config()
    except (TypeError, ValueError) as exc:  # unknown names, bad values (pydantic errors too)
        raise BackendUnavailable(f"vLLM refused vllm.engine_args: {exc}") from exc
    return VllmEngine(AsyncLLM.from_vllm_config(
        config, enable_log_requests=args.enable_log_requests,
        disable_log_stats=args.disable_log_stats))
