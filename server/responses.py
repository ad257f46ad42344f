"""Non-streaming responses: the server collects the engine's chunk stream into one body."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from backends.base import Chunk, FinishReason
from server.protocol.chat import ChatCompletion, Choice
from server.protocol.completions import Completion, CompletionChoice
from server.streaming import StreamMeta
from server.translate import UsageTotal, usage_wire


@dataclass
class _Collected:
    texts: dict[int, list[str]]
    finish: dict[int, FinishReason | None]
    total: UsageTotal


async def _collect(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int
) -> _Collected:
    out = _Collected({i: [] for i in range(n_choices)}, dict.fromkeys(range(n_choices)),
                     UsageTotal())
    try:
        async for chunk in chunks:
            out.texts.setdefault(chunk.index, []).append(chunk.text)
            if chunk.finish_reason is not None:
                out.finish[chunk.index] = chunk.finish_reason
            out.total.add(chunk, chunk.index // meta.n)
    finally:
        await chunks.aclose()
    return out


async def chat_completion(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int
) -> ChatCompletion:
    got = await _collect(meta, chunks, n_choices)
    choices: list[Choice] = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(got.texts[i]), "refusal": None},
            "logprobs": None,
            "finish_reason": got.finish[i],
        }
        for i in sorted(got.texts)
    ]
    return {"id": meta.id, "object": "chat.completion", "created": meta.created,
            "model": meta.model, "choices": choices, "usage": usage_wire(got.total.usage())}


async def completion(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int
) -> Completion:
    got = await _collect(meta, chunks, n_choices)
    choices: list[CompletionChoice] = [
        {"index": i, "text": "".join(got.texts[i]), "logprobs": None,
         "finish_reason": got.finish[i]}
        for i in sorted(got.texts)
    ]
    return {"id": meta.id, "object": "text_completion", "created": meta.created,
            "model": meta.model, "choices": choices, "usage": usage_wire(got.total.usage())}
