"""Non-streaming responses: the server collects the engine's chunk stream into one body."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from backends.base import Chunk, FinishReason, TokenLogprob
from server.protocol.chat import ChatCompletion, ChatCompletionMessage, Choice
from server.protocol.completions import Completion, CompletionChoice
from server.streaming import StreamMeta
from server.translate import (
    ToolMode,
    UsageTotal,
    chat_logprobs,
    completion_logprobs,
    tool_call_wire,
    usage_wire,
)


@dataclass
class _Collected:
    texts: dict[int, list[str]]
    finish: dict[int, FinishReason | None]
    total: UsageTotal
    logprobs: dict[int, list[TokenLogprob]]


async def _collect(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int
) -> _Collected:
    out = _Collected({i: [] for i in range(n_choices)}, dict.fromkeys(range(n_choices)),
                     UsageTotal(), {})
    try:
        async for chunk in chunks:
            out.texts.setdefault(chunk.index, []).append(chunk.text)
            out.logprobs.setdefault(chunk.index, []).extend(chunk.logprobs)
            if chunk.finish_reason is not None:
                out.finish[chunk.index] = chunk.finish_reason
            out.total.add(chunk, chunk.index // meta.n)
    finally:
        await chunks.aclose()
    return out


def _chat_choice(got: _Collected, i: int, tools: ToolMode | None, logprobs: bool) -> Choice:
    text = "".join(got.texts[i])
    message: ChatCompletionMessage = {"role": "assistant", "content": text, "refusal": None}
    finish = got.finish[i]
    if tools is not None:
        parser = tools.parser()
        parser.feed(text)
        _, calls = parser.finish()  # complete calls only: one max_tokens cut is dropped
        if calls:
            message["content"] = parser.content or None
            message["tool_calls"] = [tool_call_wire(call) for call in calls]
            if finish != "length":  # cut calls stay "length", as OpenAI reports them
                finish = "tool_calls"
    return {"index": i, "message": message, "finish_reason": finish,
            "logprobs": chat_logprobs(got.logprobs.get(i, [])) if logprobs else None}


async def chat_completion(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int,
    tools: ToolMode | None = None, logprobs: bool = False,
) -> ChatCompletion:
    got = await _collect(meta, chunks, n_choices)
    choices = [_chat_choice(got, i, tools, logprobs) for i in sorted(got.texts)]
    return {"id": meta.id, "object": "chat.completion", "created": meta.created,
            "model": meta.model, "choices": choices, "usage": usage_wire(got.total.usage())}


async def completion(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int,
    logprobs: bool = False,
) -> Completion:
    got = await _collect(meta, chunks, n_choices)
    choices: list[CompletionChoice] = [
        {"index": i, "text": "".join(got.texts[i]),
         "logprobs": completion_logprobs(got.logprobs.get(i, []), 0) if logprobs else None,
         "finish_reason": got.finish[i]}
        for i in sorted(got.texts)
    ]
    return {"id": meta.id, "object": "text_completion", "created": meta.created,
            "model": meta.model, "choices": choices, "usage": usage_wire(got.total.usage())}
