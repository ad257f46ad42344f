"""A scripted fake engine for renderer and route unit tests (the real model runs in tests/e2e):
it yields the chunks it is given, or raises where the script says, and records the requests."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace

from fastapi.testclient import TestClient

from lokal.backends.base import (
    BackendStats,
    Capabilities,
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ModelInfo,
)
from lokal.backends.events import OutputEvent
from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool import ModelPool
from lokal.backends.spec import ModelSpec
from lokal.server.app import create_app
from lokal.server.doors.render import Renderer
from lokal.server.errors import APIError
from lokal.server.settings import ServerSettings
from lokal.server.streaming import Frame

Step = Chunk | Exception


PROMPT_TOKENS = 42
"""The prompt size the scripted engine reports (first chunk, and count_tokens)."""

@dataclass
class ScriptedBackend:
    """Plays `script` for every generate(): chunks are yielded, an exception is raised there
    (before the first chunk: a caller fault; after: a mid-stream failure)."""

    script: Sequence[Step]
    model_id: str = "scripted"
    context_length: int = 2048
    requests: list[GenerationRequest] = field(default_factory=list)
    closed: int = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.model_id, self.context_length, "fake", "scripted", "cpu",
                         capabilities=Capabilities(tools=True, json_schema=True,
                                                   embeddings=True))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> BackendStats:
        return BackendStats()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        first = True
        try:
            for step in self.script:
                if isinstance(step, Exception):
                    raise step
                if first and step.prompt_tokens is None:  # as engines do: the prompt's size
                    step = replace(step, prompt_tokens=PROMPT_TOKENS)
                first = False
                yield step
        finally:
            self.closed += 1

    async def count_tokens(self, request: GenerationRequest) -> int:
        self.requests.append(request)
        return PROMPT_TOKENS

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return EmbeddingResult(tuple((1.0, 0.0) for _ in request.inputs), len(request.inputs))


def scripted_client(backend: ScriptedBackend,
                    settings: ServerSettings | None = None) -> TestClient:
    """The real app (routes, middlewares, renderers) over `backend`, ready to serve."""
    pool = ModelPool([ModelSpec.model_validate({"id": backend.model_id, "gguf": {"path": "/x"}})],
                     Hardware((), "test"), factory=lambda _: backend,
                     estimator=lambda _: Footprint("cpu"))
    pool.prepare()
    client = TestClient(create_app(settings or ServerSettings(), pool),
                        raise_server_exceptions=False)
    client.__enter__()  # runs the lifespan; closed with the process
    for _ in range(200):
        if client.get("/health/ready").status_code == 200:
            return client
        time.sleep(0.01)
    raise AssertionError("the scripted pool never became ready")


async def render(renderer: Renderer, events: Sequence[OutputEvent],
                 error: APIError | None = None) -> list[Frame]:
    """The frames serve_generation() would stream for `events` (then `error`, if given)."""
    frames = list(renderer.head())
    for event in events:
        frames += renderer.event(event)
    frames += renderer.failure(error) if error is not None else await renderer.tail()
    return frames
