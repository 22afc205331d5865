"""Tokens never reach a log line: the redaction filter on the ASGI servers' loggers."""

from __future__ import annotations

import logging

import pytest

from crdt_sync.auth.redact import RedactTokens, install, redact_query

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_x"


def test_redact_query_hides_token_values() -> None:
    line = f'127.0.0.1:5 - "WebSocket /yjs/doc?room=1&token={TOKEN}" [accepted]'
    assert TOKEN not in redact_query(line)
    assert "room=1&token=***" in redact_query(line)
    assert redact_query(f"token={TOKEN}&x=1") == "token=***&x=1"
    assert redact_query(f"/a?access_token={TOKEN}") == "/a?access_token=***"
    assert redact_query(f"subprotocols: crdt-sync, bearer.{TOKEN}") == (
        "subprotocols: crdt-sync, bearer.***"
    )
    assert redact_query(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer ***"
    assert redact_query("/yjs/doc?notoken=1") == "/yjs/doc?notoken=1"


def test_uvicorn_websocket_line_is_logged_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("uvicorn.error")
    flt = install()
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.error"):
            # the very format and arguments uvicorn's WebSocket protocol logs
            logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/yjs/d?token={TOKEN}")
            logger.info("dict args %(path)s", {"path": f"/sync/v1/ws?token={TOKEN}"})
        assert caplog.records, "the line is still logged"
        assert all(TOKEN not in r.getMessage() for r in caplog.records)
        assert '"WebSocket /yjs/d?token=***" [accepted]' in caplog.records[0].getMessage()
        assert install() is flt, "installing twice adds no second filter"
    finally:
        for target in [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access")]:
            target.removeFilter(flt)
        root = logging.getLogger()
        root.removeFilter(flt)
        for handler in root.handlers:
            handler.removeFilter(flt)
        for name in ("hypercorn.error", "hypercorn.access"):
            logging.getLogger(name).removeFilter(flt)


def test_filter_keeps_records_and_non_string_args() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "n=%d t=%s", (5, TOKEN), None)
    record.args = (5, f"?token={TOKEN}")
    assert RedactTokens().filter(record) is True
    assert record.getMessage() == "n=5 t=?token=***"
