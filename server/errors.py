"""Exception -> error envelope: one table for plain responses and mid-stream events; the
shape is the owning front door's (OpenAI's by default)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send
from typing_extensions import TypedDict

from lokal.backends.errors import (
    BackendError,
    Busy,
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineDown,
    EngineFailure,
    InvalidParameter,
    ModelLoadFailed,
    ModelNotFound,
    ModelPinned,
    ModelTooLarge,
    NotReady,
)

logger = logging.getLogger(__name__)


class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    error: ErrorBody


class APIError(Exception):
    """An error raised by the server layer itself, already in OpenAI's terms."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def envelope(message: str, type: str, param: str | None, code: str | None) -> ErrorResponse:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def to_api_error(exc: BaseException, request_id: str) -> APIError:
    """The single mapping from any exception to what the client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthExceeded):
        return APIError(400, exc.message, param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidParameter):
        return APIError(400, exc.message, param=exc.param, code="invalid_value")
    if isinstance(exc, ModelNotFound):
        return APIError(404, exc.message, param=exc.param, code="model_not_found")
    if isinstance(exc, Busy):
        return APIError(429, exc.message, type="rate_limit_error", code="server_busy",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, NotReady):
        return APIError(503, exc.message, type="server_error", code=exc.code,
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ModelLoadFailed):
        return APIError(503, exc.message, type="server_error", param=exc.param,
                        code="model_load_failed", headers={"Retry-After": "5"})
    if isinstance(exc, ModelTooLarge):
        return APIError(503, exc.message, type="server_error", param=exc.param,
                        code="model_too_large")
    if isinstance(exc, ModelPinned):
        return APIError(409, exc.message, param=exc.param, code="model_pinned")
    if isinstance(exc, EngineDown):
        return APIError(503, f"{exc.message}; the server must be restarted", type="server_error",
                        code="engine_down")
    if isinstance(exc, DeadlineExceeded):  # the engine ended the request at its deadline
        return APIError(504, f"The request took longer than this server's limit of "
                        f"{exc.seconds:g} seconds (LOKAL_REQUEST_TIMEOUT).", type="server_error",
                        code="timeout")
    if isinstance(exc, EngineFailure | BackendError):
        logger.error("request %s: engine failure: %s", request_id, exc)
    else:
        logger.error("request %s: unhandled error", request_id, exc_info=exc)
    return APIError(
        500,
        f"The server had an error while processing your request (request id {request_id}).",
        type="server_error",
        code="internal_error",
    )


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "unknown"))


Envelope = Callable[[APIError, str], dict[str, Any]]
"""A protocol's error body for an error and the request's id (each front door has one)."""


def openai_envelope(err: APIError, request_id: str) -> dict[str, Any]:
    """OpenAI's {"error": {message, type, param, code}}: the server's own shape, for every
    path no front door claims."""
    return dict(envelope(err.message, err.type, err.param, err.code))


def envelope_for(app: Any, path: str) -> Envelope:
    """The envelope of the front door that owns `path` (the longest of the path prefixes the
    doors registered on `app.state.envelopes`), OpenAI's otherwise. Middlewares answer before
    routing (401, 413, 431, 408), so the path is what they have."""
    best, found = -1, openai_envelope
    for prefix, door_envelope in getattr(app.state, "envelopes", ()):
        if (path == prefix or path.startswith(prefix + "/")) and len(prefix) > best:
            best, found = len(prefix), door_envelope
    return found


def error_response(exc: BaseException, request_id: str,
                   body: Envelope = openai_envelope) -> JSONResponse:
    err = to_api_error(exc, request_id)
    return JSONResponse(
        body(err, request_id),
        status_code=err.status,
        headers={**err.headers, "X-Request-ID": request_id},
    )


async def send_error(exc: BaseException, scope: Scope, receive: Receive, send: Send) -> None:
    """A middleware's refusal: `exc` as the answer, with the request's id, in the envelope of
    the protocol its path belongs to."""
    request_id = str(scope.get("state", {}).get("request_id", "unknown"))
    body = envelope_for(scope["app"], scope["path"])
    await error_response(exc, request_id, body)(scope, receive, send)


def _param(loc: Sequence[Any]) -> str | None:
    parts = [p for p in loc if p != "body"]
    # Pydantic names the member of a union it tried (e.g. "str", "list[int]"); drop those.
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"}):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", "invalid JSON") if isinstance(ctx, dict) else "invalid JSON"
        return APIError(400, f"We could not parse the JSON body of your request ({detail}).")
    loc = tuple(first.get("loc", ()))
    param = _param(loc)
    if first.get("type") == "missing":
        if param is None:
            return APIError(400, "The request body is missing; send a JSON object.")
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if first.get("type") == "model_attributes_type" and param is None:
        return APIError(400, "The request body must be a JSON object.")
    message = f"Invalid value for '{param}': {first.get('msg')}." if param else str(first["msg"])
    if first.get("type") == "too_short" and param:
        message = f"Invalid '{param}': empty array. Expected an array with minimum length 1."
        return APIError(400, message, param=param, code="empty_array")
    return APIError(400, message, param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc), request_id_of(request),
                              envelope_for(request.app, request.url.path))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found" if exc.status_code == 404 else None
        err = APIError(exc.status_code, str(exc.detail), code=kind)
        return error_response(err, request_id_of(request),
                              envelope_for(request.app, request.url.path))

    async def on_any(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, request_id_of(request),
                              envelope_for(request.app, request.url.path))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(APIError, on_any)
    app.add_exception_handler(BackendError, on_any)
