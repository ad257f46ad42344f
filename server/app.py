"""create_app(settings, pool): the FastAPI application; its lifespan starts and stops the pool."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lokal.backends.hardware import Hardware, probe
from lokal.backends.pool import ModelPool
from lokal.server import errors
from lokal.server.auth import APIKeyMiddleware
from lokal.server.doors import anthropic, ollama, openai, responses
from lokal.server.doors.door import Door
from lokal.server.doors.responses.store import ResponseStore
from lokal.server.limits import BodyLimitMiddleware, HeaderLimitMiddleware
from lokal.server.logs import REQUEST_ID
from lokal.server.metrics import Metrics, RequestMetricsMiddleware
from lokal.server.routes import health, metrics, ui
from lokal.server.settings import ServerSettings
from lokal.server.version import lokal_version

# The front doors, each a folder under server/doors; a new protocol is one more entry.
DOORS: tuple[Door, ...] = (openai.door, anthropic.door, responses.door, ollama.door)

logger = logging.getLogger(__name__)


def make_pool(settings: ServerSettings, hardware: Hardware) -> ModelPool:
    """The model pool `settings` describe (raises ValueError on a bad configuration)."""
    return ModelPool(settings.model_specs(), hardware, settings.backend,
                     budgets=settings.budgets(hardware.gpu_memory),
                     max_loaded=settings.max_loaded, load_timeout=settings.load_timeout,
                     idle_unload=settings.idle_unload,
                     discover=(lambda: settings.models_dir_specs(strict=False))
                     if settings.models_dir else None)


def create_app(settings: ServerSettings, pool: ModelPool | None = None) -> FastAPI:
    api_keys = settings.api_keys()  # read now: a bad key file stops start-up, not a request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_pool = pool
        if the_pool is None:
            the_pool = make_pool(settings, probe())
            the_pool.prepare()
        app.state.pool = the_pool
        app.state.metrics = Metrics(the_pool, lokal_version())
        app.state.responses = ResponseStore(settings.data_dir, settings.responses_max_stored,
                                            settings.responses_max_bytes)
        # Load in the background: /health/live answers at once, /health/ready says 503 until
        # the model is loaded, so orchestrators do not restart a pod that is only loading.
        loading = asyncio.create_task(_load(the_pool, app.state.metrics))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await the_pool.stop()
            app.state.responses.close()
            logger.info("engines stopped")

    app = FastAPI(title="lokal", version=lokal_version(), lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.settings = settings

    # Outermost last: request id, metrics, CORS (preflights answered before auth), API key,
    # body size.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes,
                       idle=settings.body_idle_timeout)
    app.add_middleware(HeaderLimitMiddleware, limit=settings.max_headers,
                       max_bytes=settings.max_header_bytes)
    app.add_middleware(APIKeyMiddleware, keys=api_keys, metrics_open=settings.metrics_open)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"],
                           expose_headers=["X-Request-ID"])
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    errors.install(app)
    app.state.envelopes = [(path, door.envelope) for door in DOORS for path in door.paths]
    for door in DOORS:
        for router in door.routers:
            app.include_router(router)
    for router in (ui.router, health.router, metrics.router):
        app.include_router(router)
    return app


async def _load(pool: ModelPool, app_metrics: Metrics) -> None:
    try:
        await pool.start()
    except Exception:
        logger.exception("loading a preloaded model failed; stopping the server")
        os.kill(os.getpid(), signal.SIGTERM)
        return
    logger.info("ready: %s", ", ".join(m.id for m in pool.models()) or "no model preloaded")


class RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware, which interferes with streaming and disconnects):
    gives every request an id, from X-Request-ID when the client sent one, and echoes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = sent[:128] if sent else f"req_{uuid.uuid4().hex[:24]}"
        scope.setdefault("state", {})["request_id"] = rid
        token = REQUEST_ID.set(rid)  # every log line of this request carries it

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Anything no handler mapped is a real fault: a 500 envelope with the request id,
            # logged once here, never the exception text.
            if started:
                raise
            envelope = errors.envelope_for(scope["app"], scope["path"])
            answer = errors.error_response(exc, rid, envelope)
            await answer(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
