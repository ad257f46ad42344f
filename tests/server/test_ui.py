"""server/routes/ui.py: `/` is the chat page for browsers and Ollama's probe answer for other
clients, its files are open under /ui/ even with API keys, and --no-ui / LOKAL_UI=false turn it
off. (The page itself is driven in a real browser by tests/e2e/test_ui.py.)"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lokal.backends.footprint import Footprint
from lokal.backends.hardware import Hardware
from lokal.backends.pool import ModelPool
from lokal.backends.spec import ModelSpec
from lokal.server.app import create_app
from lokal.server.cli import _parser
from lokal.server.settings import ServerSettings
from tests.server.test_faults import FaultyBackend

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def make_client(**settings: object) -> TestClient:
    backend = FaultyBackend("ok")
    pool = ModelPool([ModelSpec.model_validate({"id": "faulty", "gguf": {"path": "/x"}})],
                     Hardware((), "test"), factory=lambda _: backend,
                     estimator=lambda _: Footprint("cpu"))
    pool.prepare()
    return TestClient(create_app(ServerSettings(**settings), pool))


def test_browsers_get_the_page_and_other_clients_the_probe() -> None:
    with make_client() as client:
        page = client.get("/", headers=BROWSER)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/app.js">' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        for accept in ("*/*", "application/json", ""):
            probe = client.get("/", headers={"Accept": accept})
            assert probe.text == "Ollama is running", accept
            assert probe.headers["content-type"].startswith("text/plain")
        assert client.head("/", headers=BROWSER).status_code == 200
        assert client.head("/").status_code == 200


@pytest.mark.parametrize(("path", "media_type"), [
    ("app.js", "text/javascript"), ("api.js", "text/javascript"),
    ("markdown.js", "text/javascript"), ("store.js", "text/javascript"),
    ("dom.js", "text/javascript"), ("sidebar.js", "text/javascript"),
    ("thread.js", "text/javascript"), ("chat.js", "text/javascript"),
    ("models.js", "text/javascript"), ("state.js", "text/javascript"),
    ("style.css", "text/css"), ("index.html", "text/html"),
])
def test_assets_are_served_with_their_types(path: str, media_type: str) -> None:
    with make_client() as client:
        r = client.get(f"/ui/{path}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)


@pytest.mark.parametrize("path", [
    "../routes/ui.py", "..%2Fapp.py", "%2e%2e/settings.py", "package.json", "nothing.js", "",
    "vendor/marked.LICENSE",
])
def test_nothing_else_is_served(path: str) -> None:
    with make_client() as client:
        r = client.get(f"/ui/{path}")
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"


def test_the_page_is_open_with_api_keys_and_the_api_is_not() -> None:
    with make_client(api_key="secret-key") as client:
        assert client.get("/", headers=BROWSER).status_code == 200
        assert client.get("/ui/app.js").status_code == 200
        assert client.get("/", headers={"Accept": "*/*"}).text == "Ollama is running"
        assert client.get("/v1/models").status_code == 401
        assert client.get("/uix").status_code == 401


def test_no_ui_turns_the_page_off(monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(ui=False) as client:
        assert client.get("/", headers=BROWSER).text == "Ollama is running"
        assert client.get("/ui/app.js").status_code == 404
    assert _parser().parse_args(["serve", "--no-ui"]).ui is False
    assert _parser().parse_args(["serve"]).ui is None  # not given: the env or default decides
    monkeypatch.setenv("LOKAL_UI", "false")
    assert ServerSettings().ui is False
    monkeypatch.delenv("LOKAL_UI")
    assert ServerSettings().ui is True
