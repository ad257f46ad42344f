"""API-key check for every route but health: Bearer or x-api-key, compared in constant time.

A middleware rather than a route dependency, so that a route added later (or /docs, or a
404) is closed by default instead of open by omission."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from lokal.server.errors import APIError, send_error

OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/version", "/"})
# The chat page and its files hold no secret: the page asks the user for the key itself.
OPEN_PREFIXES = ("/ui/",)


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The keys a client sent: `Authorization: Bearer KEY` and/or `x-api-key: KEY`. Either
    may hold the key: some clients send a placeholder Bearer next to a real x-api-key."""
    keys: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                keys.append(token.strip())
        elif lower == b"x-api-key" and value.strip():
            keys.append(value.decode("latin-1").strip())
    return keys


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Compares against every key, without stopping at a match, so that the time taken says
    nothing about which key (or which prefix) was close."""
    given_bytes = given.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode("utf-8"))
    return found


class APIKeyMiddleware:
    """Answers 401 in OpenAI's envelope (code invalid_api_key) unless a configured key was
    sent. With no key configured it does nothing: some IDE plugins send `Bearer undefined`."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], metrics_open: bool) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = OPEN_PATHS | ({"/metrics"} if metrics_open else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths \
                or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = presented_keys(scope.get("headers", []))
        if any([key_matches(key, self.keys) for key in given]):  # no short cut: see key_matches
            await self.app(scope, receive, send)
            return
        if not given:
            message = ("You didn't provide an API key. Send it as 'Authorization: Bearer "
                       "YOUR_KEY' or 'x-api-key: YOUR_KEY'.")
        else:
            message = "Incorrect API key provided."
        err = APIError(401, message, code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
        await send_error(err, scope, receive, send)
