"""Log lines: the request id of the current request on every record, one JSON object a line."""

from __future__ import annotations

import json
import logging
import sys

from lokal.server.logs import REQUEST_ID, JsonFormatter, RequestIdFilter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("server.test", logging.INFO, __file__, 1, message, (), None)


def test_log_records_carry_the_request_id_of_their_context() -> None:
    outside = _record("outside")
    RequestIdFilter().filter(outside)
    assert outside.request_id == "-"
    token = REQUEST_ID.set("req_abc")
    try:
        inside = _record("inside %s")
        inside.args = ("x",)
        RequestIdFilter().filter(inside)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(inside))
    assert line["request_id"] == "req_abc"
    assert line["message"] == "inside x"
    assert line["level"] == "info" and line["logger"] == "server.test"
    assert line["time"].endswith("+00:00")


def test_json_log_lines_hold_exceptions_as_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exc_info"]
    assert "\n" not in JsonFormatter().format(record)
