"""Stored Responses in SQLite (stdlib sqlite3): each finished response with its own input
items, the previous_response_id chain rebuilt in one query, the oldest deleted past a cap.
Opened on first use, so a server that never stores a response never creates the file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

from lokal.server.errors import APIError

FILE_NAME = "responses.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    previous_id TEXT,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    size INTEGER NOT NULL
)
"""

# The chain from a response back through its previous_response_ids, one row per link, at
# most `limit` + 1 links deep; a link whose response is gone has NULL items and ends it.
_CHAIN = """
WITH RECURSIVE chain(depth, want) AS (
    SELECT 1, ?
    UNION ALL
    SELECT chain.depth + 1, r.previous_id FROM chain JOIN responses r ON r.id = chain.want
    WHERE r.previous_id IS NOT NULL AND chain.depth <= ?
)
SELECT chain.depth, chain.want, r.input_items, json_extract(r.response, '$.output')
FROM chain LEFT JOIN responses r ON r.id = chain.want ORDER BY chain.depth
"""


def not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="not_found")


class ResponseStore:
    """One SQLite file; every call is short and runs in a worker thread, one at a time."""

    def __init__(self, data_dir: Path, max_stored: int, max_bytes: int = 1 << 30) -> None:
        self.path = data_dir / FILE_NAME
        self.max_stored = max_stored
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(self._conn(), *args)

        return await asyncio.to_thread(locked)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Store `response` (and the input items it was made from); past either cap (count
        or bytes), the oldest stored responses go."""
        body, items = json.dumps(response), json.dumps(input_items)

        def put(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.execute("INSERT INTO responses (id, previous_id, response, input_items, "
                           "size) VALUES (?, ?, ?, ?, ?)",
                           (response["id"], response.get("previous_response_id"), body, items,
                            len(body) + len(items)))
                db.execute("DELETE FROM responses WHERE seq <= "
                           "(SELECT MAX(seq) FROM responses) - ?", (self.max_stored,))
                db.execute("DELETE FROM responses WHERE seq IN (SELECT seq FROM (SELECT seq, "
                           "SUM(size) OVER (ORDER BY seq DESC) AS newer FROM responses) "
                           "WHERE newer > ?)", (self.max_bytes,))

        await self._run(put)

    async def get(self, response_id: str) -> dict[str, Any]:
        stored: dict[str, Any] = json.loads(await self._column(response_id, "response"))
        return stored

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        stored: list[dict[str, Any]] = json.loads(await self._column(response_id,
                                                                     "input_items"))
        return stored

    async def _column(self, response_id: str, column: Literal["response", "input_items"]) -> str:
        """One stored response's JSON column; 404 if it is not stored."""
        def read(db: sqlite3.Connection) -> str | None:
            # `column` is one of two literals, never request input.
            row = db.execute(f"SELECT {column} FROM responses WHERE id = ?",
                             (response_id,)).fetchone()
            return None if row is None else str(row[0])

        raw: str | None = await self._run(read)
        if raw is None:
            raise not_found(response_id)
        return raw

    async def delete(self, response_id: str) -> None:
        def delete(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount

        if not await self._run(delete):
            raise not_found(response_id)

    async def conversation(self, response_id: str, max_chain: int) -> list[dict[str, Any]]:
        """Every item of the conversation `response_id` ends: each earlier response's input
        then output, oldest first. 404 if a response of the chain is gone; 400 if the chain
        is longer than `max_chain`."""
        rows = await self._run(
            lambda db: db.execute(_CHAIN, (response_id, max_chain)).fetchall())
        if len(rows) > max_chain:
            raise APIError(400, f"Invalid 'previous_response_id': the conversation chains back "
                           f"through more than {max_chain} responses, this server's limit "
                           "(LOKAL_RESPONSES_MAX_CHAIN).", param="previous_response_id",
                           code="invalid_value")
        items: list[dict[str, Any]] = []
        for depth, link_id, input_items, output in reversed(rows):
            if input_items is None:
                if depth == 1:
                    raise APIError(404, f"Previous response with id '{link_id}' not found.",
                                   param="previous_response_id", code="not_found")
                raise APIError(404, f"Previous response with id '{response_id}' continues "
                               f"response '{link_id}', which is no longer stored.",
                               param="previous_response_id", code="not_found")
            items += json.loads(input_items) + json.loads(output)
        return items
