"""Liveness, readiness and version; these never need credentials."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.deps import PoolDep

router = APIRouter()


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(pool: PoolDep) -> JSONResponse:
    if not pool.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "models": [m.id for m in pool.models()]})


@router.get("/health", response_model=None)
async def health(pool: PoolDep) -> JSONResponse:
    return await ready(pool)


@router.get("/version")
async def version() -> dict[str, str]:
    from server.app import _version

    return {"version": _version()}
