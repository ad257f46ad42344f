"""Wire requests -> engine-neutral GenerationRequests; engine Chunks -> wire response shapes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.backends.base import (
    ChatMessage,
    ChatPrompt,
    Constraint,
    GenerationRequest,
    LogprobsRequest,
    Prompt,
    SamplingParams,
    TextPrompt,
    TokenLogprob,
    TokenPrompt,
    Usage,
)
from lokal.backends.tool_calls import Call, ToolCallParser, ToolFormat
from lokal.backends.tools import tool_call_schema
from lokal.server.errors import APIError
from lokal.server.protocol.chat import (
    ChatCompletionMessageParam,
    ChatCompletionRequest,
    ResponseFormat,
    ToolCallWire,
)
from lokal.server.protocol.common import CompletionUsage, SamplingFields
from lokal.server.protocol.completions import CompletionRequest
from lokal.server.settings import SchemaLimits


def _unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"'{param}' is not supported: {why}", param=param,
                    code="unsupported_parameter")


def stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    return tuple(s for s in stops if s)


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (raw or {}).items():
        if not key.lstrip("-").isdigit():
            raise APIError(400, f"Invalid 'logit_bias': key {key!r} is not a token id.",
                           param="logit_bias", code="invalid_value")
        if not -100 <= value <= 100:
            raise APIError(400, f"Invalid 'logit_bias': {value} for token {key} is outside "
                           "-100..100.", param="logit_bias", code="invalid_value")
        bias[int(key)] = float(value)
    return bias


def _sampling(body: SamplingFields, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        max_tokens=max_tokens,
        stop=stops(body.stop),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=_logit_bias(body.logit_bias),
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
    )


def _content(message: ChatCompletionMessageParam, index: int) -> str | None:
    content = message.content
    if content is None or isinstance(content, str):
        if content is None and message.role != "assistant":
            raise APIError(400, f"Missing required parameter: 'messages[{index}].content'.",
                           param=f"messages[{index}].content", code="missing_required_parameter")
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise APIError(
                400,
                f"Content parts of type '{part.type}' are not supported by this model; "
                "only 'text' parts are.",
                param=f"messages[{index}].content[{j}]",
                code="unsupported_content_type",
            )
        texts.append(part.text)
    return "".join(texts)


@dataclass(frozen=True, slots=True)
class ToolMode:
    """How a chat response's text becomes tool calls: `forced` when the grammar makes the
    whole output a call (tool_choice required or a named function); `format`, the model's
    (known once the model is loaded)."""

    known: frozenset[str]
    forced: bool
    format: ToolFormat = "hermes"

    def parser(self) -> ToolCallParser:
        return ToolCallParser("json" if self.forced else self.format, self.known, self.forced)


def tool_call_wire(call: Call) -> ToolCallWire:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A request's tool choice in neutral terms: `auto`, `none`, `required` (some call), or
    `required` with `name` (that function)."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request's tools become: the tools the prompt shows (OpenAI's function-tool
    shape, which chat templates expect), how the output is parsed, and the constraint that
    enforces a forced call. Empty when there are no tools or the choice is `none`."""

    tools: tuple[Mapping[str, Any], ...] = ()
    mode: ToolMode | None = None
    constraint: Constraint | None = None


def tool_plan(tools: Sequence[Mapping[str, Any]], choice: ToolChoice | None, *,
              parallel: bool = True, param: str = "tools",
              choice_param: str = "tool_choice",
              schema_field: str = "function.parameters") -> ToolPlan:
    """The one place tools and tool_choice are checked and enforced, for every front door.
    `tools` are function tools as {"type": "function", "function": {"name", "description",
    "parameters"}}; `param`, `choice_param` and `schema_field` name the fields in the
    caller's protocol."""
    if choice is not None and not tools:
        raise APIError(400, f"'{choice_param}' is only allowed when '{param}' are specified.",
                       param=choice_param, code="invalid_value")
    if not tools or (choice is not None and choice.mode == "none"):
        return ToolPlan()
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, f"Invalid '{param}': function names must be unique.", param=param,
                       code="invalid_value")
    for i, tool in enumerate(tools):
        params = tool["function"].get("parameters")
        if params is not None and params.get("type", "object") != "object":
            where = f"{param}[{i}].{schema_field}"
            raise APIError(400, f"Invalid '{where}': must be a JSON schema of type object.",
                           param=where, code="invalid_value")
    if choice is not None and choice.name is not None and choice.name not in names:
        raise APIError(400, f"Invalid '{choice_param}': no tool named '{choice.name}' in "
                       f"'{param}'.", param=choice_param, code="invalid_value")
    forced = choice is not None and choice.mode == "required"
    if forced:
        assert choice is not None
        only = choice.name
        constraint = Constraint(kind="tool_calls", schema=tool_call_schema(
            list(tools), only=only, parallel=parallel and only is None))
    else:
        # Auto: the model may answer in text; a call it begins is held to its tool's schema.
        # Best effort unless a tool asks for strict enforcement.
        strict = any(t["function"].get("strict") for t in tools)
        constraint = Constraint(kind="tool_calls", schema=tool_call_schema(
            list(tools), parallel=False), lazy=True, names=frozenset(names),
            best_effort=not strict)
    return ToolPlan(tuple(tools), ToolMode(frozenset(names), forced=forced), constraint)


def _chat_plan(body: ChatCompletionRequest) -> ToolPlan:
    choice: ToolChoice | None
    if body.tool_choice is None:
        choice = None
    elif isinstance(body.tool_choice, str):
        choice = ToolChoice(body.tool_choice)
    else:
        choice = ToolChoice("required", body.tool_choice.function.name)
    return tool_plan([t.model_dump(exclude_none=True) for t in body.tools or []], choice,
                     parallel=body.parallel_tool_calls is not False)


def chat_tools(body: ChatCompletionRequest) -> ToolMode | None:
    return _chat_plan(body).mode


def _constraint(body: ChatCompletionRequest, plan: ToolPlan) -> Constraint | None:
    fmt = body.response_format
    wants_format = fmt is not None and fmt.type != "text"
    if plan.mode is not None and wants_format:
        raise _unsupported("response_format", "it cannot be enforced together with tools; "
                           "send one or the other")
    if plan.constraint is not None:
        return plan.constraint
    return response_format_constraint(fmt)


def response_format_constraint(fmt: ResponseFormat | None,
                               param: str = "response_format") -> Constraint | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint(kind="json_object")
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, f"Missing required parameter: '{param}.json_schema.schema'.",
                       param=f"{param}.json_schema.schema", code="missing_required_parameter")
    return Constraint(kind="json_schema", schema=fmt.json_schema.schema_)


def check_schema(schema: Any, param: str, limits: SchemaLimits) -> None:
    """400 naming the limit when `schema` is larger or deeper than `limits` allow, or asks
    for more array items than they allow (llguidance before 1.9, the one vLLM pins, builds
    arrays item by item: `minItems: 1e9` was 24 GB here)."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_bytes:
        raise APIError(400, f"Invalid '{param}': the JSON schema is {size} bytes, more than "
                       f"this server's limit of {limits.max_bytes} (LOKAL_MAX_SCHEMA_BYTES).",
                       param=param, code="schema_too_large")
    level = [schema]
    depth = 0
    while level:
        depth += 1
        if depth > limits.max_depth:
            raise APIError(400, f"Invalid '{param}': the JSON schema nests deeper than this "
                           f"server's limit of {limits.max_depth} levels "
                           "(LOKAL_MAX_SCHEMA_DEPTH).", param=param, code="schema_too_deep")
        for node in level:
            if not isinstance(node, dict):
                continue
            for keyword in ("minItems", "maxItems"):
                count = node.get(keyword)
                if isinstance(count, int) and count > limits.max_items:
                    raise APIError(400, f"Invalid '{param}': '{keyword}' is {count}, more than "
                                   f"this server's limit of {limits.max_items} array items "
                                   "(LOKAL_MAX_SCHEMA_ITEMS).", param=param,
                                   code="schema_too_large")
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else
                               node if isinstance(node, list) else ())]


def chat_request(body: ChatCompletionRequest, request_id: str,
                 limits: SchemaLimits | None = None) -> GenerationRequest:
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.",
                       param="top_logprobs", code="invalid_value")
    messages = []
    for i, m in enumerate(body.messages):
        if m.role == "tool" and not m.tool_call_id:
            raise APIError(400, f"Missing required parameter: 'messages[{i}].tool_call_id' "
                           "(a message with role 'tool' answers the tool call it names).",
                           param=f"messages[{i}].tool_call_id",
                           code="missing_required_parameter")
        calls = tuple(c.model_dump() for c in m.tool_calls or ())
        messages.append(ChatMessage(role=m.role, content=_content(m, i), name=m.name,
                                    tool_calls=calls, tool_call_id=m.tool_call_id))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    plan = _chat_plan(body)
    return GenerationRequest(
        request_id=request_id,
        prompt=ChatPrompt(tuple(messages), tools=plan.tools),
        sampling=_sampling(body, max_tokens),
        n=body.n or 1,
        logprobs=LogprobsRequest(body.top_logprobs or 0) if body.logprobs else None,
        constraint=limited(_constraint(body, plan), limits or SchemaLimits()),
    )


def limited(constraint: Constraint | None, limits: SchemaLimits) -> Constraint | None:
    """`constraint` within the schema limits: a 400 when it is over them, except a best-effort
    tool constraint (tool_choice auto, nothing strict), which is then dropped: the request
    did not ask for enforcement and gets what it got before lazy calls existed."""
    if constraint is not None and constraint.schema is not None:
        param = "tools" if constraint.kind == "tool_calls" else "response_format"
        try:
            check_schema(constraint.schema, param, limits)
        except APIError:
            if constraint.best_effort:
                return None
            raise
    return constraint


def completion_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[Prompt]:
    if isinstance(prompt, str):
        return [TextPrompt(prompt)]
    if not prompt:
        raise APIError(400, "Invalid 'prompt': empty array.", param="prompt", code="empty_array")
    if all(isinstance(p, int) for p in prompt):
        return [TokenPrompt(tuple(p for p in prompt if isinstance(p, int)))]
    out: list[Prompt] = []
    for p in prompt:
        if isinstance(p, str):
            out.append(TextPrompt(p))
        elif isinstance(p, list):
            if not p:
                raise APIError(400, "Invalid 'prompt': empty token array.", param="prompt",
                               code="empty_array")
            out.append(TokenPrompt(tuple(p)))
    return out


def completion_requests(body: CompletionRequest, request_id: str) -> list[GenerationRequest]:
    if body.echo:
        raise _unsupported("echo", "echo is not implemented in this build yet")
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise _unsupported("best_of", "best_of other than n is not implemented")
    sampling = _sampling(body, 16 if body.max_tokens is None else body.max_tokens)
    prompts = completion_prompts(body.prompt)
    return [
        GenerationRequest(request_id=f"{request_id}-{i}" if len(prompts) > 1 else request_id,
                          prompt=p, sampling=sampling, n=n, suffix=body.suffix,
                          logprobs=None if body.logprobs is None else LogprobsRequest(
                              body.logprobs))
        for i, p in enumerate(prompts)
    ]


def usage_wire(usage: Usage) -> CompletionUsage:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


@dataclass
class UsageTotal:
    """Adds up the per-choice usage of one response. The prompt counts once per prompt."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    _prompts_seen: set[int] = field(default_factory=set)

    def add(self, usage: Usage | None, prompt_index: int) -> None:
        if usage is None:
            return
        self.completion_tokens += usage.completion_tokens
        if prompt_index not in self._prompts_seen:
            self._prompts_seen.add(prompt_index)
            self.prompt_tokens += usage.prompt_tokens
            self.cached_tokens += usage.cached_tokens

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


def _top(entry: TokenLogprob) -> list[dict[str, Any]]:
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entry.top]


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Chat shape: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}."""
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
                         "top_logprobs": _top(e)} for e in entries],
            "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """Legacy completions shape: parallel lists, top alternatives as {token: logprob}."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": offsets}
