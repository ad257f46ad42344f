"""The chat page: `/` for a browser (Ollama's probe answer for every other client) and the
page's own files under /ui/, all shipped as package data and served from nowhere else."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from lokal.server.deps import SettingsDep
from lokal.server.errors import APIError

router = APIRouter()

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".png": "image/png"}
# The page talks to this server only: model output can neither run script (the sanitiser is
# the first guard, this the second) nor load an image from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
OLLAMA_PROBE = "Ollama is running"


def wants_page(request: Request) -> bool:
    """A browser navigating here says text/html; API clients and Ollama's probes do not."""
    return "text/html" in request.headers.get("accept", "").lower()


@router.get("/", include_in_schema=False)
async def chat_page(request: Request, settings: SettingsDep) -> Response:
    if settings.ui and wants_page(request):
        return FileResponse(UI_DIR / "index.html", media_type=MEDIA_TYPES[".html"],
                            headers=SECURITY_HEADERS)
    return Response(OLLAMA_PROBE, media_type="text/plain")


router.add_api_route("/", chat_page, methods=["HEAD"], include_in_schema=False)


@router.get("/ui/{path:path}", include_in_schema=False)
async def ui_asset(path: str, settings: SettingsDep) -> Response:
    file = (UI_DIR / path).resolve()
    media_type = MEDIA_TYPES.get(file.suffix)
    if not settings.ui or media_type is None or not file.is_relative_to(UI_DIR) \
            or not file.is_file():
        raise APIError(404, f"No such file of the chat page: /ui/{path}", code="not_found")
    return FileResponse(file, media_type=media_type, headers=SECURITY_HEADERS)
