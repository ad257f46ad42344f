"""Ollama's native API under /api."""

from lokal.server.doors.door import Door
from lokal.server.doors.ollama import routes
from lokal.server.doors.ollama.render import ollama_envelope

door = Door("ollama", (routes.router,), ollama_envelope, ("/api",))
