"""The only module that knows SSE framing: role and usage chunks, mid-stream errors, [DONE]."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

from backends.base import Chunk, Usage
from backends.errors import EngineFailure
from backends.tool_calls import CallStart, Event
from server.errors import envelope, to_api_error
from server.protocol.common import SamplingFields
from server.translate import (
    ToolMode,
    UsageTotal,
    chat_logprobs,
    completion_logprobs,
    usage_wire,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamMeta:
    id: str
    created: int
    model: str
    request_id: str
    include_usage: bool
    n: int
    """Choices per prompt; a chunk's prompt is index // n."""

    @classmethod
    def of(cls, prefix: str, body: SamplingFields, request_id: str, n: int) -> StreamMeta:
        """One response's identity: `prefix` is OpenAI's id prefix (chatcmpl, cmpl)."""
        return cls(
            id=f"{prefix}-{request_id.removeprefix('req_')}",
            created=int(time.time()),
            model=body.model,
            request_id=request_id,
            include_usage=bool(body.stream and body.stream_options
                               and body.stream_options.include_usage),
            n=n,
        )


async def prime(chunks: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    """Wait for the first chunk so that caller faults surface as plain 4xx before HTTP 200."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise EngineFailure("the engine ended the stream without a result") from None
    except BaseException:
        await chunks.aclose()
        raise

    async def replay() -> AsyncGenerator[Chunk, None]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    return replay()


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def _frames(
    meta: StreamMeta,
    chunks: AsyncGenerator[Chunk, None],
    head: Callable[[int], dict[str, Any]],
    piece: Callable[[Chunk], list[dict[str, Any]]],
    envelope_of: Callable[[list[dict[str, Any]]], dict[str, Any]],
    n_choices: int,
    null_usage: bool,
) -> AsyncIterator[str]:
    """Shared SSE body: optional per-choice head chunks, pieces, usage chunk, [DONE].

    With include_usage, chat chunks carry `"usage": null` until the last one (as OpenAI sends
    them); the legacy completions schema does not allow null there, so those omit the key."""
    total = UsageTotal()

    def wrap(choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
        obj = envelope_of(choices)
        if usage is not None:
            obj["usage"] = usage_wire(usage)
        elif meta.include_usage and null_usage:
            obj["usage"] = None
        return _dump(obj)

    try:
        for index in range(n_choices):
            first = head(index)
            if first:
                yield wrap([first])
        async for chunk in chunks:
            total.add(chunk, chunk.index // meta.n)
            for choice in piece(chunk):
                yield wrap([choice])
        if meta.include_usage:
            yield wrap([], total.usage())
    except Exception as exc:
        err = to_api_error(exc, meta.request_id)
        logger.warning("request %s: stream failed mid-way: %s", meta.request_id, err.message)
        yield _dump(envelope(err.message, err.type, err.param, err.code))
    finally:
        await chunks.aclose()
    yield "[DONE]"


def chat_stream(
    meta: StreamMeta, chunks: AsyncGenerator[Chunk, None], n_choices: int,
    tools: ToolMode | None = None,
) -> EventSourceResponse:
    def envelope_of(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created,
                "model": meta.model, "choices": choices}

    def head(index: int) -> dict[str, Any]:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}

    parsers = {i: tools.parser() for i in range(n_choices)} if tools else {}
    announced: dict[int, int] = {}

    def delta(i: int, event: Event) -> dict[str, Any]:
        """One parser event as a chunk choice. OpenAI's tool-call delta shape: index, id and
        name once, then the arguments in fragments as the model writes them."""
        body: dict[str, Any]
        if isinstance(event, str):
            body = {"content": event}
        elif isinstance(event, CallStart):
            announced[i] = announced.get(i, 0) + 1
            body = {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                    "function": {"name": event.name, "arguments": ""}}]}
        else:
            body = {"tool_calls": [{"index": event.index,
                                    "function": {"arguments": event.text}}]}
        return {"index": i, "delta": body, "logprobs": None, "finish_reason": None}

    def piece(chunk: Chunk) -> list[dict[str, Any]]:
        i = chunk.index
        logprobs = chat_logprobs(chunk.logprobs) if chunk.logprobs else None
        out: list[dict[str, Any]] = []
        if tools:
            out += [delta(i, event) for event in parsers[i].feed(chunk.text)]
            if logprobs:
                if out and "content" in out[0]["delta"]:
                    out[0]["logprobs"] = logprobs
                else:
                    out.insert(0, {"index": i, "delta": {"content": ""},
                                   "logprobs": logprobs, "finish_reason": None})
        elif chunk.text or logprobs:
            out.append({"index": i, "delta": {"content": chunk.text}, "logprobs": logprobs,
                        "finish_reason": None})
        if chunk.finish_reason is None:
            return out
        finish: str = chunk.finish_reason
        if tools:
            tail, _ = parsers[i].finish()
            out += [delta(i, event) for event in tail]
            if announced.get(i) and finish != "length":  # cut calls stay "length"
                finish = "tool_calls"
        out.append({"index": i, "delta": {"content": ""}, "logprobs": None,
                    "finish_reason": finish})
        return out

    return _response(_frames(meta, chunks, head, piece, envelope_of, n_choices, True))


def completion_stream(meta: StreamMeta, chunks: AsyncGenerator[Chunk, None]) -> EventSourceResponse:
    def envelope_of(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": meta.id, "object": "text_completion", "created": meta.created,
                "model": meta.model, "choices": choices}

    offsets: dict[int, int] = {}

    def piece(chunk: Chunk) -> list[dict[str, Any]]:
        if not (chunk.text or chunk.logprobs or chunk.finish_reason is not None):
            return []
        logprobs = None
        if chunk.logprobs:
            logprobs = completion_logprobs(chunk.logprobs, offsets.get(chunk.index, 0))
        offsets[chunk.index] = offsets.get(chunk.index, 0) + len(chunk.text)
        return [{"index": chunk.index, "text": chunk.text, "logprobs": logprobs,
                 "finish_reason": chunk.finish_reason}]

    return _response(_frames(meta, chunks, lambda _: {}, piece, envelope_of, 0, False))


def finish_streams_on_shutdown() -> None:
    """By default sse-starlette cuts every open stream when uvicorn gets SIGTERM. lokal lets
    them finish instead: uvicorn then waits for them for its graceful-shutdown timeout
    (LOKAL_SHUTDOWN_GRACE) and cancels what is left. sse-starlette keeps this switch
    process-wide; it is flipped once, by `lokal serve`."""
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


def _response(frames: AsyncIterator[str]) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        async for frame in frames:
            yield {"data": frame}

    return EventSourceResponse(
        events(),
        sep="\n",
        ping=15,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
