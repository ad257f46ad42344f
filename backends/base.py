"""The Backend protocol and the frozen, engine-neutral types that cross it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "tool_calls"]
Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call. None where the request said nothing: the chat template
    shows the model only what was given."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    """The arguments' JSON schema; None: any object."""
    strict: bool | None = None
    """The caller asked for the schema to be enforced exactly."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: in a reply (read by backends.tool_calls) or in the history."""

    id: str
    name: str
    arguments: str
    """The arguments' JSON text, as generated (or as the client sent it back)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class TextPrompt:
    text: str


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    messages: tuple[ChatMessage, ...]
    tools: tuple[Tool, ...] = ()
    add_generation_prompt: bool = True
    continue_final: bool = False
    """The model continues the final message (a prefilled reply) instead of starting a turn."""


Prompt = TextPrompt | TokenPrompt | ChatPrompt


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    """None means: whatever room the context leaves after the prompt."""
    max_tokens_ceiling: bool = False
    """max_tokens is a ceiling (Anthropic's and the Responses API's meaning): a prompt leaving
    less room generates to the end of the context and stops with "length". False (OpenAI chat
    and completions, as OpenAI and vLLM): prompt + max_tokens over the context is refused."""
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    top_k: int = 0
    """Sample from the k likeliest tokens only; 0: no such cut."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the likeliest; 0: no such cut."""
    repetition_penalty: float = 1.0
    """Scales down the logits of tokens already seen (llama.cpp's repeat_penalty, vLLM's
    repetition_penalty); 1: none. vLLM counts the prompt's tokens too, lokal's llama.cpp
    engine only the generated ones, as it does for the OpenAI penalties."""


@dataclass(frozen=True, slots=True)
class LogprobsRequest:
    """How many alternatives to report per generated token (0 = only the chosen one)."""

    top_n: int = 0


@dataclass(frozen=True, slots=True)
class Constraint:
    """Restricts the output: a JSON schema, a raw grammar, or tool calls."""

    kind: Literal["json_object", "json_schema", "grammar", "tool_calls"]
    schema: Mapping[str, Any] | None = None
    grammar: str | None = None
    lazy: bool = False
    """tool_calls only: `schema` is one call object, held from where the model begins a call
    to one of `names` (its format's opener, or a bare call object at the reply's start) until
    that call closes; the text around calls is free (tool_choice auto)."""
    names: frozenset[str] = frozenset()
    best_effort: bool = False
    """Lazy only: a tool whose schema cannot be enforced gets any JSON object as arguments
    instead of a 400 (no tool asked for strict enforcement)."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a request must be over: the engine ends it with DeadlineExceeded after that."""

    at: float
    """A time.perf_counter() value (the clock the server times requests with)."""
    seconds: float
    """The limit this deadline stands for, for the error's message."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    logprobs: LogprobsRequest | None = None
    constraint: Constraint | None = None
    suffix: str | None = None
    echo: bool = False
    deadline: Deadline | None = None
    """None: no limit. Passed before the first chunk or while streaming, the engine stops the
    request's work and raises DeadlineExceeded from its stream."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's log probability under the model, and the `top` alternatives."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one choice's output. The last chunk of a choice has finish_reason and usage."""

    index: int = 0
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    """One entry per token sampled for this chunk, when the request asked for logprobs."""
    queue_seconds: float | None = None
    """Set on a choice's first chunk when the engine queues requests: time spent waiting."""
    stop_sequence: str | None = None
    """On the last chunk: the request's stop string that ended the choice, if one did."""
    prompt_tokens: int | None = None
    """Set on a choice's first chunk: the prompt's tokens as the engine runs them (the same
    count as the last chunk's usage), so that nobody tokenizes the prompt a second time."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    chat: bool = True
    completions: bool = True
    tools: bool = False
    json_schema: bool = False
    logprobs: bool = False
    fim: bool = False
    embeddings: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    context_length: int
    backend: str
    backend_reason: str
    device: str
    owned_by: str = "lokal"
    created: int = 0
    capabilities: Capabilities = field(default_factory=Capabilities)
    chat_template: Literal["model", "config", "fallback"] | None = None
    """Whose chat template renders chat prompts: the model file's own, the YAML's
    `chat_template`, or lokal's ChatML fallback; None until the engine has looked."""
    tool_format: Literal["hermes", "llama3", "mistral"] = "hermes"
    """How this model writes tool calls (backends.tool_formats), from its chat template."""
    memory_in_process: bool = False
    """The engine holds the model in this process (llama.cpp, not vLLM's engine core), so
    this process's growth over the load is the model's memory."""
    vllm_series: Literal["engine", "lokal"] | None = None
    """Who publishes vLLM's metric names (vllm:*) for this model: its engine itself (vLLM),
    or lokal from the engine's stats and chunks (llama.cpp: routers that score vLLM pods
    read lokal's the same way); None: nobody."""


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts or token ids to embed, one vector each, in order."""

    request_id: str
    inputs: tuple[TextPrompt | TokenPrompt, ...]
    dimensions: int | None = None
    """None: the model's native size. Engines refuse sizes the model was not trained for."""
    truncate: bool = False
    """An input longer than the model embeds in one piece keeps its first tokens (Ollama's
    /api/embed default) instead of being refused."""


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    """One unit-length (L2-normalised) vector per input, in input order."""
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A snapshot for metrics and readiness; counters are totals since start."""

    running: int = 0
    waiting: int = 0
    slots_total: int = 1
    kv_cells_used: int = 0
    """Cells holding KV, a finished conversation's kept for prefix reuse included."""
    kv_cells_busy: int = 0
    """Cells held by running sequences only."""
    kv_cells_total: int = 0
    prefix_cache_hit_tokens: int = 0
    cancelled: int = 0
    ram_cache_bytes: int = 0
    """Host RAM held by KV saved from evicted slots (llama.cpp's prompt cache)."""
    ram_cache_hit_tokens: int = 0
    """Prompt tokens restored from that cache instead of recomputed (also counted in
    prefix_cache_hit_tokens)."""
    spec_drafts: int = 0
    """Speculative drafts checked (llama.cpp prompt lookup), their tokens, and how many of
    those the model took."""
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    engine_error: str | None = None
    """Why the engine can no longer serve (its thread or process died); None while it can.
    Permanent: only a restart brings it back, so liveness and readiness both fail."""


@runtime_checkable
class Backend(Protocol):
    """One loaded model on one engine.

    `generate` raises caller faults (ContextLengthExceeded, InvalidParameter, Busy) before
    its first chunk and EngineFailure after. Closing the iterator stops the engine's work for
    that request within one decode step.
    """

    @property
    def info(self) -> ModelInfo: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One vector per input; InvalidParameter when the model does not serve embeddings."""
        ...

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens `request` would give the engine: its chat template, tools and
        BOS applied exactly as generate() does, nothing generated."""
        ...

    def stats(self) -> BackendStats:
        """A snapshot for metrics and readiness (the engine's slots, KV cells, whether it died)."""
        ...
