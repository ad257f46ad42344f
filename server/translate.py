"""Wire requests -> engine-neutral GenerationRequests; engine Chunks -> wire response shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.base import (
    ChatMessage,
    ChatPrompt,
    Chunk,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TextPrompt,
    TokenPrompt,
    Usage,
)
from server.errors import APIError
from server.protocol.chat import ChatCompletionMessageParam, ChatCompletionRequest
from server.protocol.common import CompletionUsage, SamplingFields
from server.protocol.completions import CompletionRequest


def _unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"'{param}' is not supported: {why}", param=param,
                    code="unsupported_parameter")


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    return tuple(s for s in stops if s)


def _sampling(body: SamplingFields, max_tokens: int | None) -> SamplingParams:
    if body.logit_bias:
        raise _unsupported("logit_bias", "this server does not apply logit_bias yet")
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        max_tokens=max_tokens,
        stop=_stops(body.stop),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
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


def chat_request(body: ChatCompletionRequest, request_id: str) -> GenerationRequest:
    if body.tools:
        raise _unsupported("tools", "tool calling is not implemented in this build yet")
    if body.tool_choice not in (None, "none"):
        raise _unsupported("tool_choice", "tool calling is not implemented in this build yet")
    if body.response_format is not None and body.response_format.type != "text":
        raise _unsupported("response_format",
                           f"'{body.response_format.type}' output is not enforced yet")
    if body.logprobs or body.top_logprobs:
        raise _unsupported("logprobs", "log probabilities are not implemented in this build yet")
    messages = []
    for i, m in enumerate(body.messages):
        if m.tool_calls:
            raise _unsupported(f"messages[{i}].tool_calls", "tool calling is not implemented yet")
        messages.append(ChatMessage(role=m.role, content=_content(m, i), name=m.name,
                                    tool_call_id=m.tool_call_id))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    return GenerationRequest(
        request_id=request_id,
        prompt=ChatPrompt(tuple(messages)),
        sampling=_sampling(body, max_tokens),
        n=body.n or 1,
    )


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
    if body.logprobs is not None:
        raise _unsupported("logprobs", "log probabilities are not implemented in this build yet")
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise _unsupported("best_of", "best_of other than n is not implemented")
    sampling = _sampling(body, 16 if body.max_tokens is None else body.max_tokens)
    prompts = completion_prompts(body.prompt)
    return [
        GenerationRequest(request_id=f"{request_id}-{i}" if len(prompts) > 1 else request_id,
                          prompt=p, sampling=sampling, n=n, suffix=body.suffix)
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

    def add(self, chunk: Chunk, prompt_index: int) -> None:
        if chunk.usage is None:
            return
        self.completion_tokens += chunk.usage.completion_tokens
        if prompt_index not in self._prompts_seen:
            self._prompts_seen.add(prompt_index)
            self.prompt_tokens += chunk.usage.prompt_tokens
            self.cached_tokens += chunk.usage.cached_tokens

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
