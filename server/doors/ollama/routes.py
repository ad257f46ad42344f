"""Ollama's native API under /api (`GET /`, which Ollama clients probe, is answered by
server/routes/ui.py: the chat page to browsers, `Ollama is running` to everyone else)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from lokal.backends.base import EmbeddingRequest, TextPrompt
from lokal.backends.pool import ModelPool
from lokal.server.deps import PoolDep, RequestIdDep, SettingsDep
from lokal.server.disconnect import cancel_on_disconnect
from lokal.server.doors.ollama.models import describe, running, show, tag_entry
from lokal.server.doors.ollama.render import (
    OllamaChatRenderer,
    OllamaGenerateRenderer,
    Timing,
    created_at,
)
from lokal.server.doors.ollama.translate import (
    chat_request,
    generate_request,
    keep_alive_seconds,
    model_id,
    ollama_error,
    sampling,
)
from lokal.server.doors.ollama.wire import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    KeepAlive,
    OllamaOptions,
    ShowRequest,
)
from lokal.server.doors.translate import MAX_EMBEDDING_INPUTS, Translated
from lokal.server.generation import serve_generation
from lokal.server.limits import reject_lone_surrogates
from lokal.server.version import lokal_version

router = APIRouter()
# A lone surrogate escape in the body is a 400 before anything reads its text.
api = APIRouter(prefix="/api", dependencies=[Depends(reject_lone_surrogates)])

NOT_HERE = ("lokal serves the models configured in its models directory (one YAML per "
            "model) and does not {what} through Ollama's API")


@api.get("/version")
async def ollama_version() -> dict[str, str]:
    return {"version": lokal_version()}


# Clients probe with HEAD too; one operation per path in the OpenAPI document.
api.add_api_route("/version", ollama_version, methods=["HEAD"], include_in_schema=False)


def _timing(request: Request) -> Timing:
    return Timing(getattr(request.state, "started", None) or time.perf_counter())


async def _load_or_unload(pool: ModelPool, model: str, seconds: float | None,
                          piece: dict[str, Any], name: str) -> dict[str, Any]:
    """Ollama's documented way to load (an empty prompt) or unload (and keep_alive 0)."""
    if seconds == 0:
        await pool.unload(model)
        reason = "unload"
    else:
        await pool.load(model)
        reason = "load"
    return {"model": name, "created_at": created_at(), **piece, "done": True,
            "done_reason": reason}


def _keep_alive(pool: ModelPool, model: str, value: KeepAlive | None) -> float | None:
    seconds = keep_alive_seconds(value)
    pool.keep_alive(model, seconds)
    return seconds


async def _answer(request: Request, pool: ModelPool, body: ChatRequest | GenerateRequest,
                  translate: Callable[[int], Translated], empty: dict[str, Any] | None,
                  renderer: type[OllamaChatRenderer | OllamaGenerateRenderer]) -> Response:
    """Ollama's chat and generate: the request as the engine's (`translate` gets the model's
    context length), its keep_alive, then either the load or unload an empty request asks
    for (`empty`: the piece its answer carries) or the generation. The renderer learns from
    serve_generation() how long the model took to come (Ollama's load_duration)."""
    timing = _timing(request)
    model = model_id(pool, body.model)
    translated = translate(pool.find(model).info.context_length)
    seconds = _keep_alive(pool, model, body.keep_alive)
    if empty is not None:
        return JSONResponse(await _load_or_unload(pool, model, seconds, empty, body.model))
    return await serve_generation(request, pool, model, [translated.generation],
                                  renderer(body.model, timing), stream=body.stream)


@api.post("/chat", response_model=None)
async def ollama_chat(body: ChatRequest, request: Request, pool: PoolDep,
                      request_id: RequestIdDep, settings: SettingsDep) -> Response:
    limits = settings.schema_limits()
    empty = None if body.messages else {"message": {"role": "assistant", "content": ""}}
    return await _answer(request, pool, body, lambda context: chat_request(
        body, request_id, body.model, context, limits), empty, OllamaChatRenderer)


@api.post("/generate", response_model=None)
async def ollama_generate(body: GenerateRequest, request: Request, pool: PoolDep,
                          request_id: RequestIdDep, settings: SettingsDep) -> Response:
    limits = settings.schema_limits()
    empty = {"response": ""} if not body.prompt and body.suffix is None else None
    return await _answer(request, pool, body, lambda context: generate_request(
        body, request_id, body.model, context, limits), empty, OllamaGenerateRenderer)


async def _embed(request: Request, pool: ModelPool, model: str, request_id: str,
                 inputs: list[str], dimensions: int | None, options: OllamaOptions | None,
                 truncate: bool = False) -> tuple[list[list[float]], int, Timing]:
    timing = _timing(request)
    sampling(options, pool.find(model).info.context_length)  # the same checks as generating
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise ollama_error(f"too many inputs: {len(inputs)}, at most {MAX_EMBEDDING_INPUTS}")
    if not inputs:
        return [], 0, timing
    async with pool.lease(model) as backend:
        timing.load_ns = int((time.perf_counter() - timing.started) * 1e9)
        request.state.model = backend.info.id
        result = await cancel_on_disconnect(request, backend.embed(EmbeddingRequest(
            request_id, tuple(TextPrompt(text) for text in inputs), dimensions, truncate)))
    return [list(v) for v in result.vectors], result.prompt_tokens, timing


@api.post("/embed")
async def ollama_embed(body: EmbedRequest, request: Request, pool: PoolDep,
                       request_id: RequestIdDep) -> dict[str, Any]:
    """Vectors are L2-normalised, as Ollama's are. An input too long for the model keeps its
    first tokens, as Ollama's `truncate` (default true) does; with `truncate: false` it is a
    400. prompt_eval_count counts the tokens embedded."""
    model = model_id(pool, body.model)
    _keep_alive(pool, model, body.keep_alive)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    vectors, tokens, timing = await _embed(request, pool, model, request_id, inputs,
                                           body.dimensions, body.options, body.truncate)
    total = int((time.perf_counter() - timing.started) * 1e9)
    return {"model": body.model, "embeddings": vectors, "total_duration": total,
            "load_duration": timing.load_ns, "prompt_eval_count": tokens}


@api.post("/embeddings")
async def ollama_embeddings(body: EmbeddingsRequest, request: Request, pool: PoolDep,
                            request_id: RequestIdDep) -> dict[str, Any]:
    """The legacy endpoint: one prompt, one vector (an empty prompt: an empty vector)."""
    model = model_id(pool, body.model)
    _keep_alive(pool, model, body.keep_alive)
    inputs = [body.prompt] if body.prompt else []
    vectors, _, _ = await _embed(request, pool, model, request_id, inputs, None, body.options)
    return {"embedding": vectors[0] if vectors else []}


@api.get("/tags")
async def ollama_list(pool: PoolDep) -> dict[str, Any]:
    """Every configured model, loaded or not, named `<id>:latest`."""
    specs = [pool.spec(state.id) for state in pool.states()]
    described = await asyncio.to_thread(lambda: [describe(spec) for spec in specs])
    return {"models": [tag_entry(d) for d in described]}


@api.post("/show")
async def ollama_show(body: ShowRequest, pool: PoolDep) -> dict[str, Any]:
    name = body.model or body.name
    if not name:
        raise ollama_error("model is required")
    model = model_id(pool, name)
    spec = pool.spec(model)
    d = await asyncio.to_thread(describe, spec)
    return show(spec, pool.find(model), d, body.verbose)


@api.get("/ps")
async def ollama_ps(pool: PoolDep) -> dict[str, Any]:
    return {"models": await asyncio.to_thread(running, pool)}


# What Ollama manages itself and lokal leaves to its models directory: a 400 in Ollama's
# shape that says what to do instead. (method, path, what lokal does not do, what to do)
_ELSEWHERE = (
    ("POST", "/pull", "pull models", "; download one on the server with `lokal pull <hub "
     "repo>`, which writes its YAML there"),
    ("POST", "/push", "push models", ""),
    ("POST", "/create", "create models", "; add a YAML there instead"),
    ("POST", "/copy", "copy models", "; give a model more names with `aliases` in its YAML"),
    ("DELETE", "/delete", "delete models", "; remove one with `lokal rm`"),
    ("POST", "/blobs/{digest}", "take model files", ""),
    ("HEAD", "/blobs/{digest}", "take model files", ""),
)


def _refusal(message: str) -> Callable[[], Awaitable[None]]:
    async def refuse() -> None:
        raise ollama_error(message)

    return refuse


for method, path, what, instead in _ELSEWHERE:
    api.add_api_route(path, _refusal(NOT_HERE.format(what=what) + instead), methods=[method],
                      name=f"ollama_{path.strip('/').split('/')[0]}",
                      include_in_schema=method != "HEAD")


router.include_router(api)  # last: include_router copies the routes defined so far
