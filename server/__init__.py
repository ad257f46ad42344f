"""lokal's HTTP layer: OpenAI wire schema, routes, SSE, errors; talks to `backends` only."""
