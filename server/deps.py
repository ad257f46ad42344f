"""Typed FastAPI dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from lokal.backends.pool import ModelPool
from lokal.server.settings import ServerSettings


def get_pool(request: Request) -> ModelPool:
    pool: ModelPool = request.app.state.pool
    return pool


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def get_request_id(request: Request) -> str:
    return str(request.state.request_id)


PoolDep = Annotated[ModelPool, Depends(get_pool)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
