"""No byte from a client reaches the terminal raw: the CLI's log formatter escapes every
non-printable character (ANSI escapes, bidi controls, line breaks) of every record."""

from __future__ import annotations

import io
import logging

import httpx
import pytest
import websockets

from crdt_sync.cli import EscapingFormatter, escape_text

pytestmark = pytest.mark.anyio

RED = "\x1b[31m"


def format_record(message: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.logs.escaping")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError(f"bad {RED}value")
            except ValueError:
                logger.exception(message, *args)
        else:
            logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_formatter_escapes_escape_sequences_bidi_and_line_breaks() -> None:
    out = format_record("doc %s from %s", f"x{RED}y\u202ez", "a\nINFO forged line")
    assert out.count("\n") == 1  # one record, one line
    assert "\x1b" not in out and "\u202e" not in out
    assert "x\\x1b[31my\\u202ez" in out and "a\\nINFO forged line" in out


def test_formatter_keeps_traceback_lines_but_escapes_them() -> None:
    out = format_record("failed", exc=True)
    assert "Traceback (most recent call last):" in out.splitlines()[1]
    assert "\x1b" not in out and "bad \\x1b[31mvalue" in out


def test_escape_text_leaves_printable_unicode_alone() -> None:
    assert escape_text("héllo wörld 日本 😀") == "héllo wörld 日本 😀"
    assert escape_text("\x00\x7f\u200b") == "\\x00\\x7f\\u200b"


async def test_client_values_reach_the_server_log_escaped(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/docs/" + "%1b%5b31mred")).status_code == 400
        response = await http.get(
            "/sync/v1/events", headers={"Last-Event-ID": RED.encode("latin-1") + b"1"}
        )
        assert response.status_code == 400
        assert (await http.get("/sync/v1/delta?t=%1b%5b31m")).status_code == 400
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(server.ws_url + "/%E2%80%AEevil%1b%5b31m"):
            pass
    log = server.log()
    assert "\x1b" not in log and "\u202e" not in log, [
        line for line in log.splitlines() if "\x1b" in line or "\u202e" in line
    ]
    assert "\\x1b[31mred" in log  # the path of the refused GET, escaped
    assert "\\u202eevil\\x1b[31m" in log  # the refused Yjs doc name
