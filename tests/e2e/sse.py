"""Read a raw SSE response the way a strict client would, without the openai SDK's help."""

from __future__ import annotations

import json
from typing import Any

import httpx


def read_events(response: httpx.Response) -> tuple[list[Any], list[str]]:
    """Return (decoded JSON events, raw data lines). Asserts the framing is well formed."""
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = "".join(response.iter_text())
    data_lines: list[str] = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        if all(ln.startswith(":") for ln in lines):
            continue  # a comment-only event: the keep-alive ping on a slow stream
        data = [ln for ln in lines if ln.startswith("data: ")]
        others = [ln for ln in lines if not ln.startswith("data: ") and not ln.startswith(":")]
        assert not others, f"unexpected SSE lines: {others!r}"
        assert len(data) == 1, f"one data line per event expected: {block!r}"
        data_lines.append(data[0].removeprefix("data: "))
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    assert data_lines[-1] == "[DONE]"
    assert data_lines.count("[DONE]") == 1
    return [json.loads(d) for d in data_lines[:-1]], data_lines
