"""API keys through real HTTP: keys from LOKAL_API_KEY (several) and LOKAL_API_KEY_FILE, Bearer
or x-api-key, 401 invalid_api_key everywhere but health, /metrics closed by default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, start_server, stop_server
from tests.openapi import validate

ENV_KEYS = ("key-one-Zq8", "key-two-Xw3")
FILE_KEY = "key-three-from-file-Lp0"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("auth")
    key_file = tmp / "keys"
    key_file.write_text(f"# one key a line\n\n{FILE_KEY}\n")
    srv = start_server(tmp, "--context-length", "1024",
                       env={"LOKAL_API_KEY": f"{ENV_KEYS[0]}, {ENV_KEYS[1]}",
                            "LOKAL_API_KEY_FILE": str(key_file)})
    yield srv
    stop_server(srv)


def _assert_401(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 401, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["x-request-id"]
    return body["error"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL}"), ("POST", "/v1/chat/completions"),
    ("POST", f"/v1/models/{MODEL}/load"), ("POST", f"/v1/models/{MODEL}/unload"),
    ("POST", "/v1/completions"), ("GET", "/metrics"), ("GET", "/docs"),
    ("GET", "/openapi.json"), ("GET", "/v1/not-a-route"),
])
def test_every_route_but_health_needs_a_key(secured: Server, method: str, path: str) -> None:
    r = httpx.request(method, secured.base_url + path, json=CHAT if method == "POST" else None)
    err = _assert_401(r)
    assert "API key" in err["message"]


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Bearer {ENV_KEYS[0]}x"},
    {"Authorization": f"Basic {ENV_KEYS[0]}"},
    {"x-api-key": ENV_KEYS[0][:-1]},
    {"Authorization": "Bearer"},
])
def test_a_wrong_key_is_401_and_never_echoed(secured: Server, headers: dict[str, str]) -> None:
    r = httpx.post(secured.v1 + "/chat/completions", json=CHAT, headers=headers)
    err = _assert_401(r)
    assert ENV_KEYS[0] not in r.text and "wrong-key" not in err["message"]


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {ENV_KEYS[0]}"},
    {"Authorization": f"bearer {ENV_KEYS[1]}"},
    {"x-api-key": ENV_KEYS[1]},
    {"Authorization": f"Bearer {FILE_KEY}"},
    # A placeholder Bearer next to a real x-api-key, as some clients send.
    {"x-api-key": FILE_KEY, "Authorization": "Bearer undefined"},
])
def test_each_configured_key_works_in_either_header(secured: Server,
                                                    headers: dict[str, str]) -> None:
    r = httpx.post(secured.v1 + "/chat/completions", json=CHAT, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_openai_sdk_with_and_without_the_key(secured: Server) -> None:
    good = openai.OpenAI(base_url=secured.v1, api_key=ENV_KEYS[1], max_retries=0, timeout=120)
    assert [m.id for m in good.models.list()] == [MODEL]
    reply = good.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                   "content": "hi"}],
                                         max_tokens=2)
    assert reply.choices[0].message.content is not None
    bad = openai.OpenAI(base_url=secured.v1, api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.code == "invalid_api_key"


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/version"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_health_answers_without_credentials(secured: Server, path: str,
                                            headers: dict[str, str]) -> None:
    assert httpx.get(secured.base_url + path, headers=headers).status_code == 200


def test_metrics_open_with_a_key_and_counts_refusals(secured: Server) -> None:
    httpx.get(secured.v1 + "/models")
    r = httpx.get(secured.base_url + "/metrics", headers={"x-api-key": ENV_KEYS[0]})
    assert r.status_code == 200
    assert 'lokal_requests_total{endpoint="/v1/models",model="",status="401"}' in r.text


def test_without_configured_keys_any_authorization_is_ignored(http: httpx.Client) -> None:
    # Some IDE plugins send `Bearer undefined` when no key was entered.
    for headers in ({"Authorization": "Bearer undefined"}, {"x-api-key": "whatever"}, {}):
        r = http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 200, r.text
    assert http.get("/metrics", headers={"Authorization": "Bearer undefined"}).status_code == 200


def test_an_empty_key_file_stops_start_up(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# no keys here\n\n")
    with pytest.raises(RuntimeError, match="holds no key"):
        start_server(tmp_path, env={"LOKAL_API_KEY_FILE": str(empty)}, ready_timeout=60)


def test_anthropic_clients_get_anthropics_error_shape(secured: Server) -> None:
    """Claude Code and the Anthropic SDKs send x-api-key to /v1/messages: a bad key is their
    AuthenticationError, parsed from Anthropic's envelope; with the good key in x-api-key
    the message is served."""
    import anthropic

    from tests.openapi import validate as validate_spec

    ask = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    bad = anthropic.Anthropic(base_url=secured.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(**ask)  # type: ignore[call-overload]
    body = caught.value.body
    validate_spec(body, "ErrorResponse", vendor="anthropic")
    assert isinstance(body, dict) and body["error"]["type"] == "authentication_error"
    good = anthropic.Anthropic(base_url=secured.base_url, api_key=ENV_KEYS[0], max_retries=0)
    reply = good.messages.create(**ask)  # type: ignore[call-overload]
    assert reply.usage.output_tokens <= 2
