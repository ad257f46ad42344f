"""POST /v1/responses, GET/DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items:
OpenAI's Responses API, stored responses in SQLite."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from lokal.server.deps import PoolDep, RequestIdDep, SettingsDep
from lokal.server.doors.responses.render import ResponseMeta, ResponsesRenderer, Save
from lokal.server.doors.responses.store import ResponseStore
from lokal.server.doors.responses.translate import echo, new_id, response_request
from lokal.server.doors.responses.wire import CreateResponse
from lokal.server.doors.translate import left_out_header
from lokal.server.errors import APIError
from lokal.server.generation import serve_generation
from lokal.server.limits import reject_lone_surrogates

# A lone surrogate escape in the body is a 400 before anything reads its text.
router = APIRouter(dependencies=[Depends(reject_lone_surrogates)])


def get_store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


StoreDep = Annotated[ResponseStore, Depends(get_store)]


@router.post("/v1/responses", response_model=None)
async def create_response(
    body: CreateResponse, request: Request, pool: PoolDep, request_id: RequestIdDep,
    settings: SettingsDep, store: StoreDep,
) -> Response:
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        history = await store.conversation(body.previous_response_id,
                                           settings.responses_max_chain)
    translated, items = response_request(body, history, request_id,
                                         settings.schema_limits())
    save: Save | None = None
    if body.store is not False:
        async def save(response: dict[str, Any]) -> None:
            await store.put(response, items)

    meta = ResponseMeta(new_id("resp"), int(time.time()), body.model, echo(body))
    response = await serve_generation(request, pool, body.model, [translated.generation],
                                      ResponsesRenderer(meta, save), stream=bool(body.stream))
    return left_out_header(translated.plan, response, request_id)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, store: StoreDep,
                       stream: bool = False) -> dict[str, Any]:
    if stream:
        raise APIError(400, "'stream' is not supported: lokal finishes every response before "
                       "storing it; there is nothing left to stream.", param="stream",
                       code="unsupported_parameter")
    return await store.get(response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, store: StoreDep) -> dict[str, Any]:
    await store.delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str, store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    """A response's own input items (not those of the responses it continues), newest
    first unless `order` is asc; `after` an item id, for the next page."""
    items = await store.input_items(response_id)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise APIError(400, f"Invalid 'after': no input item '{after}' in response "
                           f"'{response_id}'.", param="after", code="invalid_value")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None}
