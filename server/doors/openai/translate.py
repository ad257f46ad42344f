"""OpenAI chat and completions requests -> engine-neutral GenerationRequests; usage and
logprobs -> their wire shapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    Tool,
    ToolCall,
    Usage,
)
from lokal.server.doors.openai.wire import (
    ChatCompletionMessageParam,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
    ToolCallWire,
)
from lokal.server.doors.translate import (
    ToolChoice,
    ToolPlan,
    Translated,
    constraint_of,
    logit_bias,
    output_constraint,
    sampling,
    tool_plan,
    unsupported,
)
from lokal.server.doors.wire import CompletionUsage, SamplingFields
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits


def _sampling(body: SamplingFields, max_tokens: int | None) -> SamplingParams:
    return sampling(
        temperature=body.temperature, top_p=body.top_p, seed=body.seed, max_tokens=max_tokens,
        stop=body.stop, presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty, logit_bias=logit_bias(body.logit_bias),
        top_k=body.top_k, min_p=body.min_p, repetition_penalty=body.repetition_penalty)


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


def tool_call_wire(call: ToolCall) -> ToolCallWire:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def _chat_plan(body: ChatCompletionRequest) -> ToolPlan:
    choice: ToolChoice | None
    if body.tool_choice is None:
        choice = None
    elif isinstance(body.tool_choice, str):
        choice = ToolChoice(body.tool_choice)
    else:
        choice = ToolChoice("required", body.tool_choice.function.name)
    tools = [Tool(t.function.name, t.function.description, t.function.parameters,
                  t.function.strict) for t in body.tools or ()]
    return tool_plan(tools, choice,
                     parallel=body.parallel_tool_calls is not False)


def _response_format(fmt: ResponseFormat | None, limits: SchemaLimits) -> Constraint | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return output_constraint("json_object", None, "response_format", limits)
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, "Missing required parameter: 'response_format.json_schema.schema'.",
                       param="response_format.json_schema.schema",
                       code="missing_required_parameter")
    return output_constraint("json_schema", fmt.json_schema.schema_, "response_format", limits)


def chat_request(body: ChatCompletionRequest, request_id: str,
                 limits: SchemaLimits | None = None) -> Translated:
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
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments)
                      for c in m.tool_calls or ())
        messages.append(ChatMessage(role=m.role, content=_content(m, i), name=m.name,
                                    tool_calls=calls, tool_call_id=m.tool_call_id))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    plan = _chat_plan(body)
    limits = limits or SchemaLimits()
    fmt = body.response_format
    constraint = constraint_of(plan, fmt is not None and fmt.type != "text",
                               lambda: _response_format(fmt, limits), "response_format", limits)
    return Translated(GenerationRequest(
        request_id=request_id,
        prompt=ChatPrompt(tuple(messages), tools=plan.tools),
        sampling=_sampling(body, max_tokens),
        n=body.n or 1,
        logprobs=LogprobsRequest(body.top_logprobs or 0) if body.logprobs else None,
        constraint=constraint,
    ), plan)


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
        raise unsupported("echo", "echo is not implemented in this build yet")
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise unsupported("best_of", "best_of other than n is not implemented")
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
