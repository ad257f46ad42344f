"""Liveness, readiness and version; these never need credentials."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lokal.backends.pool import ModelPool
from lokal.server.deps import PoolDep
from lokal.server.version import lokal_version

router = APIRouter()


def _engine_down(pool: ModelPool) -> JSONResponse | None:
    errors = pool.engine_errors()
    if not errors:
        return None
    return JSONResponse({"status": "engine_down", "errors": errors}, status_code=503)


@router.get("/health/live", response_model=None)
async def live(pool: PoolDep) -> JSONResponse:
    """Fails only when an engine died, which a restart alone can mend; loading is alive."""
    return _engine_down(pool) or JSONResponse({"status": "ok"})


@router.get("/health/ready", response_model=None)
async def ready(pool: PoolDep) -> JSONResponse:
    down = _engine_down(pool)
    if down is not None:
        return down
    if not pool.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "models": [m.id for m in pool.models()]})


@router.get("/health", response_model=None)
async def health(pool: PoolDep) -> JSONResponse:
    return await ready(pool)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": lokal_version()}
