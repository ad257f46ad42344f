"""Anthropic's Messages API (Claude Code and the Anthropic SDKs)."""

from lokal.server.doors.anthropic import routes
from lokal.server.doors.anthropic.render import anthropic_envelope
from lokal.server.doors.door import Door

door = Door("anthropic", (routes.router,), anthropic_envelope, ("/v1/messages",))
