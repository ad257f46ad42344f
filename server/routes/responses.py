"""POST /v1/responses, GET/DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items:
OpenAI's Responses API, stored responses in SQLite."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
