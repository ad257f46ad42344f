"""OpenAI's API: chat completions, completions, embeddings and the model list."""

from lokal.server.doors.door import Door
from lokal.server.doors.openai import models, routes
from lokal.server.errors import openai_envelope

door = Door("openai", (routes.router, models.router), openai_envelope, ("/v1",))
