"""What a front door is to the app: its routes, the paths it owns (so that a refusal made
before routing takes its shape) and its error envelope. app.py registers a list of them."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from lokal.server.errors import Envelope


@dataclass(frozen=True, slots=True)
class Door:
    name: str
    routers: tuple[APIRouter, ...]
    envelope: Envelope
    paths: tuple[str, ...]
    """Path prefixes whose errors take this door's envelope; the longest match wins."""
