"""Tokens never reach a log line: the record factory redacts every record."""

from __future__ import annotations

import logging

import pytest

from crdt_sync import log_redaction
from crdt_sync.log_redaction import RedactingFilter, redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f'127.0.0.1:5 - "WebSocket /yjs/a?token={JWT}" [accepted]',
            '127.0.0.1:5 - "WebSocket /yjs/a?token=[redacted]" [accepted]',
        ),
        (
            "/sync/v1/ws?since=3&token=opaque-abc&t=task",
            "/sync/v1/ws?since=3&token=[redacted]&t=task",
        ),
        ("GET /x?access_token=abc", "GET /x?access_token=[redacted]"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [redacted]"),
        ("(b'authorization', b'Bearer xyz')", "(b'authorization', b'Bearer [redacted]')"),
        ('{"type": "auth", "token": "opaque"}', '{"type": "auth", "token": "[redacted]"}'),
        ("{'token': 'opaque'}", "{'token': '[redacted]'}"),
        (f"subprotocols ['crdt-sync', '{JWT}']", "subprotocols ['crdt-sync', '[redacted]']"),
        ("alg none eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "alg none [redacted]"),
        ("secret=hunter2 rest", "secret=[redacted] rest"),
        (
            "subprotocols: crdt-sync, bearer.opaque-123",
            "subprotocols: crdt-sync, bearer.[redacted]",
        ),
    ],
)
def test_tokens_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["conn=3 room='notes/a' actor=alice connected", "crdt_sync.app.Runtime", "www.example.com"],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_installed_factory_redacts_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    previous = logging.getLogRecordFactory()
    try:
        log_redaction.install()
        log_redaction.install()  # idempotent: wrapped once
        logger = logging.getLogger("uvicorn.error")
        with caplog.at_level(logging.INFO):
            logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", f"/yjs/a?token={JWT}")
            try:
                raise ValueError(f"bad url /yjs/a?token={JWT}")
            except ValueError:
                logger.exception("failed")
        text = caplog.text
        assert JWT not in text
        assert "token=[redacted]" in text
        assert "ValueError: bad url /yjs/a?token=[redacted]" in text
    finally:
        logging.setLogRecordFactory(previous)


def test_filter_redacts_for_handlers_configured_elsewhere() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "url %s", (f"?token={JWT}",), None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "url ?token=[redacted]"
