"""Keep tokens out of every log line, the ASGI server's own lines included.

uvicorn logs each WebSocket handshake as ``"WebSocket /yjs/doc?token=eyJ..." [accepted]``:
the query string, token and all. :func:`install` wraps the log record factory so
that every record, from any logger and before any handler sees it, has these
replaced: ``token=...`` style query/key values (any key ending in ``token``,
``secret`` or ``password``), ``Bearer ...`` credentials and ``bearer.<token>``
subprotocols, ``"token": "..."`` members of JSON or Python reprs, and JWT-looking
strings (``eyJ...`` header, three base64url segments). The arguments are formatted
into the message only when a record holds one of these (cheap pre-check), and
tracebacks are redacted too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

_KEY = r"[\w-]*(?:token|secret|password)"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # ?token=..., &access_token=..., secret=... (query strings, key=value text)
    (re.compile(rf"(?i)(\b{_KEY}=)[^&\s\"'#;,)]+"), rf"\1{REDACTED}"),
    # "token": "...", 'token': '...' (JSON, Python reprs)
    (re.compile(rf"(?i)(\"{_KEY}\"\s*:\s*\")[^\"]*(\")"), rf"\1{REDACTED}\2"),
    (re.compile(rf"(?i)('{_KEY}'\s*:\s*')[^']*(')"), rf"\1{REDACTED}\2"),
    # Authorization: Bearer ...
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
    # A token offered as a WebSocket subprotocol: "bearer.<token>"
    (re.compile(r"(?i)\b(bearer\.)[A-Za-z0-9._~+/=-]+"), rf"\1{REDACTED}"),
    # A JWT anywhere (its header is base64url of '{"...', so it starts with eyJ)
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
]
_HINTS = ("token", "secret", "password", "bearer", "eyj")


def redact(text: str) -> str:
    """``text`` with every token-like value replaced by ``[redacted]``."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact ``record`` in place: its formatted message, traceback and stack."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: let the handler report it as usual
        return record
    cleaned = redact(message)
    if cleaned != message:
        record.msg = cleaned
        record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """The same redaction as a filter, for handlers configured elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_installed: Any = None


def install() -> None:
    """Redact every log record from now on (idempotent)."""
    global _installed
    current = logging.getLogRecordFactory()
    if _installed is not None and current is _installed:
        return
    previous = current

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    _installed = factory
    logging.setLogRecordFactory(factory)
