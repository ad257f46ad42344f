"""Wire models of Ollama's native API (/api/chat, /api/generate, /api/embed, /api/show, ...),
as Ollama's api/types.go and the official `ollama` client send them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Ollama's clients send what Go's encoder writes: extra fields are ignored, as Ollama does.
OLLAMA_CONFIG = ConfigDict(extra="ignore")

KeepAlive = str | int | float
"""A Go duration ("5m", "1h30m", "0") or seconds; negative: forever."""
Format = Literal["", "json"] | dict[str, Any]
"""Ollama's `format`: "json", or a JSON schema."""


class OllamaOptions(BaseModel):
    """The options Ollama knows (api/types.go Options and Runner). Unknown keys are kept
    in `model_extra` so that the translation can name them in its 400."""

    model_config = ConfigDict(extra="allow")

    # sampling lokal honours
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    num_predict: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    num_ctx: int | None = Field(default=None, ge=1)
    # sampling lokal honours at their defaults only
    repeat_last_n: int | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    tfs_z: float | None = None
    typical_p: float | None = None
    penalize_newline: bool | None = None
    # load-time and hardware settings: no per-request meaning, accepted and ignored
    num_keep: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None


class ToolCallFunction(BaseModel):
    model_config = OLLAMA_CONFIG

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = OLLAMA_CONFIG

    function: ToolCallFunction


class Message(BaseModel):
    model_config = OLLAMA_CONFIG

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class ToolFunction(BaseModel):
    model_config = OLLAMA_CONFIG

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = OLLAMA_CONFIG

    type: Literal["function"] = "function"
    function: ToolFunction


class _Generating(BaseModel):
    model_config = OLLAMA_CONFIG

    model: str = Field(min_length=1)
    format: Format | None = None
    options: OllamaOptions | None = None
    stream: bool = True
    keep_alive: KeepAlive | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None


class GenerateRequest(_Generating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(BaseModel):
    model_config = OLLAMA_CONFIG

    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsRequest(BaseModel):
    """The legacy /api/embeddings: one prompt, one vector."""

    model_config = OLLAMA_CONFIG

    model: str = Field(min_length=1)
    prompt: str
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None


class ShowRequest(BaseModel):
    model_config = OLLAMA_CONFIG

    model: str | None = None
    name: str | None = None
    """The older clients' spelling of `model`."""
    verbose: bool = False
