"""Ollama's native API under /api, and `GET /`, which Ollama clients probe."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
