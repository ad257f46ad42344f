"""What the llama.cpp scheduler runs: a request's Job, each choice's running Seq, and the
Events the engine thread hands back."""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lokal.backends.base import FinishReason, SamplingParams, TokenLogprob
from lokal.backends.llamacpp.cache import Slot
from lokal.backends.llamacpp.guidance import LazyCall
from lokal.backends.llamacpp.lookup import Drafter
from lokal.backends.llamacpp.sampling import SamplerChain
from lokal.backends.stops import StopMatcher


@dataclass(frozen=True, slots=True)
class Event:
    """What the engine thread hands to a request's stream (through `Job.emit`)."""

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    queue_seconds: float | None = None
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_sequence: str | None = None


@dataclass(slots=True)
class Job:
    """One request: n choices over one prompt. `emit` must be thread-safe."""

    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    seed: int
    n: int
    emit: Callable[[Event], None]
    matchers: list[Any] = field(default_factory=list)
    """One llguidance matcher per choice when the output is constrained."""
    lazy: list[LazyCall] = field(default_factory=list)
    """One per choice when only the tool calls the model begins are constrained."""
    top_logprobs: int | None = None
    """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True, eq=False)
class Seq:
    """One choice of a running job: its slot, sampler and output state."""

    job: Job
    index: int
    slot: Slot
    sampler: SamplerChain
    matcher: Any
    """The constraint's llguidance matcher, or None (with `lazy`: while no call is open)."""
    lazy: LazyCall | None
    reuse: int
    n_past: int
    prefilling: bool
    leader: bool
    next_token: int = -1
    generated: int = 0
    held: list[int] = field(default_factory=list)
    """Generated tokens not handed over yet: their text is held back (an incomplete UTF-8
    character, a possible stop sequence). They go with the next event, so that every token
    reaches the stream (and the inter-token-latency metric)."""
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    drafter: Drafter | None = None
    """Prompt-lookup drafts for this sequence (speculation on, once its prompt is in)."""
