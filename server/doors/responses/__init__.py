"""OpenAI's Responses API, with stored responses (Codex and the Agents SDK)."""

from lokal.server.doors.door import Door
from lokal.server.doors.responses import routes
from lokal.server.errors import openai_envelope

door = Door("responses", (routes.router,), openai_envelope, ("/v1/responses",))
