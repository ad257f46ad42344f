"""The SQLite response store: put/get/delete, input items, the previous_response_id chain
(oldest first, a gone link a 404, too long a 400), the cap on stored responses, and that the
file survives a reopen and is not created until used."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from lokal.server.doors.responses.store import FILE_NAME, ResponseStore
from lokal.server.errors import APIError


def _response(rid: str, previous: str | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "response", "previous_response_id": previous,
            "output": [{"id": f"msg_out_{rid}", "type": "message"}]}


def _items(rid: str) -> list[dict[str, Any]]:
    return [{"id": f"msg_in_{rid}", "type": "message"}]


def _chain(store: ResponseStore, n: int) -> None:
    previous = None
    for i in range(n):
        asyncio.run(store.put(_response(f"r{i}", previous), _items(f"r{i}")))
        previous = f"r{i}"


def test_put_get_items_delete_and_reopen(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "data", max_stored=10)
    assert not (tmp_path / "data").exists()  # nothing is created until a response is stored
    asyncio.run(store.put(_response("r0"), _items("r0")))
    store.close()
    again = ResponseStore(tmp_path / "data", max_stored=10)
    assert (tmp_path / "data" / FILE_NAME).is_file()
    assert asyncio.run(again.get("r0")) == _response("r0")
    assert asyncio.run(again.input_items("r0")) == _items("r0")
    asyncio.run(again.delete("r0"))
    for op in (again.get, again.input_items, again.delete):
        with pytest.raises(APIError) as err:
            asyncio.run(op("r0"))
        assert err.value.status == 404 and err.value.code == "not_found"
    again.close()


def test_conversation_is_each_link_input_then_output_oldest_first(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_stored=100)
    _chain(store, 3)
    ids = [item["id"] for item in asyncio.run(store.conversation("r2", max_chain=10))]
    assert ids == ["msg_in_r0", "msg_out_r0", "msg_in_r1", "msg_out_r1", "msg_in_r2",
                   "msg_out_r2"]
    with pytest.raises(APIError) as err:
        asyncio.run(store.conversation("r2", max_chain=2))
    assert err.value.status == 400 and err.value.param == "previous_response_id"
    assert len(asyncio.run(store.conversation("r2", max_chain=3))) == 6
    asyncio.run(store.delete("r0"))
    with pytest.raises(APIError) as err:
        asyncio.run(store.conversation("r2", max_chain=10))
    assert err.value.status == 404 and "'r0'" in err.value.message
    with pytest.raises(APIError) as err:
        asyncio.run(store.conversation("nope", max_chain=10))
    assert err.value.status == 404 and err.value.param == "previous_response_id"


def test_oldest_responses_go_past_the_cap(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_stored=3)
    _chain(store, 5)
    for gone in ("r0", "r1"):
        with pytest.raises(APIError):
            asyncio.run(store.get(gone))
    assert [asyncio.run(store.get(f"r{i}"))["id"] for i in (2, 3, 4)] == ["r2", "r3", "r4"]


def test_oldest_responses_go_past_the_byte_cap(tmp_path: Path) -> None:
    one = len(json.dumps(_response("r0", None))) + len(json.dumps(_items("r0")))
    store = ResponseStore(tmp_path, max_stored=100, max_bytes=3 * one + 20)
    _chain(store, 6)
    kept = []
    for i in range(6):
        try:
            kept.append(asyncio.run(store.get(f"r{i}"))["id"])
        except APIError:
            pass
    assert kept == ["r3", "r4", "r5"]
    store.close()
