"""Ollama's wire requests -> engine-neutral GenerationRequests: model names, `options` ->
sampling, `format` -> a constraint, messages and tools, `keep_alive` -> seconds."""

from __future__ import annotations

import json
import logging
import math
import re

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Constraint,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TextPrompt,
    Tool,
    ToolCall,
)
from lokal.backends.errors import ModelNotFound
from lokal.backends.pool import ModelPool
from lokal.server.doors.ollama.wire import (
    ChatRequest,
    Format,
    GenerateRequest,
    KeepAlive,
    Message,
    OllamaOptions,
)
from lokal.server.doors.translate import ToolPlan, Translated, limited, output_constraint, tool_plan
from lokal.server.doors.translate import sampling as over_defaults
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits

logger = logging.getLogger(__name__)

TAG = ":latest"

IGNORED_OPTIONS = frozenset({"num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread",
                             "numa", "low_vram", "f16_kv", "logits_all", "vocab_only",
                             "use_mmap", "use_mlock", "embedding_only"})
"""Load-time and hardware settings: lokal's model YAML decides these, per model."""

# Ollama's defaults (api/types.go DefaultOptions), so that its clients sample as on Ollama.
DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, DEFAULT_REPEAT_PENALTY = 0.8, 40, 0.9, 1.1
DEFAULT_REPEAT_LAST_N = 64
OLLAMA_SAMPLING = SamplingParams(temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P,
                                 top_k=DEFAULT_TOP_K, repetition_penalty=DEFAULT_REPEAT_PENALTY)

# Options lokal cannot honour except at the value that means "off" (mirostat's tau and eta
# only matter when mirostat is on).
_ONLY_AT = {"mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0, "penalize_newline": False}


def ollama_error(message: str, status: int = 400) -> APIError:
    return APIError(status, message)


def model_id(pool: ModelPool, name: str) -> str:
    """The lokal model `name` means: an id or alias, optionally tagged ":latest" (as Ollama
    clients write names); 404 in Ollama's words otherwise."""
    for candidate in (name, name.removesuffix(TAG)) if name.endswith(TAG) else (name,):
        try:
            return pool.find(candidate).id
        except ModelNotFound:
            continue
    raise ollama_error(f"model '{name}' not found", 404)


def ollama_name(model: str) -> str:
    """How /api/tags and /api/ps name a lokal model: Ollama's name:tag form."""
    return model if ":" in model else model + TAG


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: KeepAlive | None) -> float | None:
    """Seconds a model stays loaded once idle (math.inf: forever; None: not given). Go
    duration strings ("5m", "1h30m", "-1"), or numbers of seconds, as Ollama reads them."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ollama_error("invalid keep_alive: expected a duration such as \"5m\" or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ollama_error(f"invalid keep_alive {value!r}: expected a duration such "
                                   "as \"5m\", \"1h\" or \"0\", or seconds") from None
            seconds = sign * sum(float(n) * _UNIT[u] for n, u in parts)
    if math.isnan(seconds):
        raise ollama_error("invalid keep_alive: not a number")
    return math.inf if seconds < 0 else seconds


def sampling(options: OllamaOptions | None, context_length: int) -> SamplingParams:
    """`options` as lokal's sampling, with Ollama's defaults for what they leave out; 400
    naming an option lokal cannot honour, or one Ollama does not know."""
    o = options or OllamaOptions()
    unknown = sorted(o.model_extra or {})
    if unknown:
        raise ollama_error(f"unknown option '{unknown[0]}'")
    given = o.model_dump(exclude_none=True)
    ignored = sorted(IGNORED_OPTIONS & given.keys())
    if ignored:
        logger.debug("ignoring load-time options %s (set per model in its YAML)", ignored)
    for name, off in _ONLY_AT.items():
        if name in given and given[name] != off:
            raise ollama_error(f"option '{name}' is not supported by lokal (only {off!r}, "
                               "which turns it off)")
    penalised = any(given.get(k, d) != d for k, d in
                    (("repeat_penalty", 1.0), ("presence_penalty", 0.0),
                     ("frequency_penalty", 0.0)))
    if o.repeat_last_n not in (None, DEFAULT_REPEAT_LAST_N) and penalised:
        raise ollama_error(f"option 'repeat_last_n' is not supported by lokal (only the "
                           f"default {DEFAULT_REPEAT_LAST_N}: penalties look at the text "
                           "generated so far)")
    if o.num_ctx is not None and o.num_ctx > context_length:
        raise ollama_error(f"option 'num_ctx' {o.num_ctx} is more than this model's context "
                           f"of {context_length} tokens; lokal serves each model with the "
                           "context its configuration gives (context_length), never reloads "
                           "it per request")
    max_tokens = o.num_predict
    if max_tokens is not None and max_tokens < 0:
        if max_tokens not in (-1, -2):
            raise ollama_error("option 'num_predict' must be positive, -1 (no limit) or -2 "
                               "(fill the context)")
        max_tokens = None  # both: whatever room the context leaves
    elif max_tokens == 0:
        raise ollama_error("option 'num_predict' must be positive, -1 or -2")
    return over_defaults(
        OLLAMA_SAMPLING, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k,
        min_p=o.min_p, seed=o.seed if o.seed is not None and o.seed >= 0 else None,
        max_tokens=max_tokens, stop=o.stop, presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty, repetition_penalty=o.repeat_penalty)


def format_constraint(fmt: Format | None, limits: SchemaLimits) -> Constraint | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return output_constraint("json_object", None, "format", limits)
    if not isinstance(fmt, dict):
        raise ollama_error(f"invalid format {fmt!r}: expected \"json\" or a JSON schema")
    return output_constraint("json_schema", fmt, "format", limits)


def _refuse_common(body: ChatRequest | GenerateRequest, model: str) -> None:
    if body.think not in (None, False):
        raise ollama_error(f"\"{model}\" does not support thinking")
    if body.logprobs:
        raise ollama_error("logprobs are not supported by lokal's Ollama API; use "
                           "/v1/chat/completions with logprobs")


def _no_images(images: list[str] | None, model: str, where: str) -> None:
    if images:
        raise ollama_error(f"{where}: images are not supported: model '{model}' is a text "
                           "model")


def _messages(messages: list[Message], model: str) -> tuple[ChatMessage, ...]:
    """Ollama's messages as lokal's: tool calls get ids, and each tool answer the id of the
    call it answers (by tool_name, else in order), which Ollama's wire leaves out."""
    out: list[ChatMessage] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not yet answered
    for i, m in enumerate(messages):
        _no_images(m.images, model, f"messages[{i}]")
        if m.role == "assistant" and m.tool_calls:
            calls = tuple(ToolCall(f"call_{i}_{j}", c.function.name,
                                   json.dumps(c.function.arguments))
                          for j, c in enumerate(m.tool_calls))
            pending = [(f"call_{i}_{j}", c.function.name) for j, c in enumerate(m.tool_calls)]
            out.append(ChatMessage("assistant", m.content or None, tool_calls=calls))
        elif m.role == "tool":
            match = next((p for p in pending if p[1] == m.tool_name), None) \
                or (pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
            out.append(ChatMessage("tool", m.content, name=m.tool_name or
                                   (match[1] if match else None),
                                   tool_call_id=match[0] if match else f"call_{i}"))
        else:
            out.append(ChatMessage(m.role, m.content))
    return tuple(out)


def chat_request(body: ChatRequest, request_id: str, model: str, context_length: int,
                 limits: SchemaLimits) -> Translated:
    _refuse_common(body, model)
    tools = [Tool(t.function.name, t.function.description, t.function.parameters)
             for t in body.tools or ()]
    plan = tool_plan(tools, None)
    constraint = format_constraint(body.format, limits)
    if plan.names and constraint is not None:
        raise ollama_error("format cannot be enforced together with tools; send one or the "
                           "other")
    constraint = constraint or limited(plan.constraint, limits)
    prompt = ChatPrompt(_messages(body.messages, model), tools=plan.tools)
    generation = GenerationRequest(request_id=request_id, prompt=prompt,
                                   sampling=sampling(body.options, context_length),
                                   constraint=constraint)
    return Translated(generation, plan)


def generate_request(body: GenerateRequest, request_id: str, model: str, context_length: int,
                     limits: SchemaLimits) -> Translated:
    _refuse_common(body, model)
    _no_images(body.images, model, "'images'")
    if body.template:
        raise ollama_error("'template' is not supported: lokal renders prompts with the "
                           "model's own chat template; send raw=true with a prompt you "
                           "formatted yourself")
    if body.context:
        raise ollama_error("'context' is not supported: send the conversation through "
                           "/api/chat, or the whole prompt")
    prompt: Prompt
    if body.raw or body.suffix is not None:
        prompt = TextPrompt(body.prompt)  # a suffix: the model's fill-in-the-middle layout
    else:
        system = (ChatMessage("system", body.system),) if body.system else ()
        prompt = ChatPrompt((*system, ChatMessage("user", body.prompt)))
    generation = GenerationRequest(request_id=request_id, prompt=prompt,
                                   sampling=sampling(body.options, context_length),
                                   constraint=format_constraint(body.format, limits),
                                   suffix=body.suffix)
    return Translated(generation, ToolPlan())

