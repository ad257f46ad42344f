"""Every front door on one app: /openapi.json describes their routes, and each protocol's
request metrics are labelled by its own route template."""

from __future__ import annotations

from lokal.backends.base import Chunk, Usage
from tests.server.scripted import ScriptedBackend, scripted_client

ROUTES = {
    "/v1/chat/completions": {"post"}, "/v1/completions": {"post"},
    "/v1/messages": {"post"}, "/v1/messages/count_tokens": {"post"},
    "/v1/responses": {"post"}, "/v1/responses/{response_id}": {"get", "delete"},
    "/v1/responses/{response_id}/input_items": {"get"},
    "/api/chat": {"post"}, "/api/generate": {"post"}, "/api/embed": {"post"},
    "/api/embeddings": {"post"}, "/api/tags": {"get"}, "/api/show": {"post"},
    "/api/ps": {"get"}, "/api/version": {"get"},
}


def test_openapi_describes_every_front_door_and_metrics_name_their_routes() -> None:
    backend = ScriptedBackend([Chunk(0, "hi"), Chunk(0, finish_reason="stop",
                                                     usage=Usage(3, 1))])
    client = scripted_client(backend)
    paths = client.get("/openapi.json").json()["paths"]
    for path, methods in ROUTES.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    assert client.post("/v1/messages", json={"model": "scripted", "max_tokens": 4, "messages": [
        {"role": "user", "content": "x"}]}).status_code == 200
    assert client.post("/api/chat", json={"model": "scripted", "stream": False, "messages": [
        {"role": "user", "content": "x"}]}).status_code == 200
    metrics = client.get("/metrics").text
    for endpoint in ("/v1/messages", "/api/chat"):
        assert f'endpoint="{endpoint}",model="scripted",status="200"' in metrics, endpoint
