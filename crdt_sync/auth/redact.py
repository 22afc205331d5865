"""Keep tokens out of logs.

The ASGI servers log each request and WebSocket with its URL, query string
included (uvicorn: ``'%s - "WebSocket %s" [accepted]'`` on ``uvicorn.error``, and
the access line on ``uvicorn.access``), so ``?token=`` would land in every log.
:class:`RedactTokens` is a :class:`logging.Filter` that rewrites ``token=`` /
``access_token=`` values and ``bearer.<token>`` subprotocols to ``***`` in a
record's message and string arguments; install it on the handlers (or on the
``uvicorn.error`` / ``uvicorn.access`` loggers) with :func:`install`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_TOKEN_PARAM = re.compile(r"(?i)((?:^|[?&\s\"'])(?:token|access_token)=)[^&#\s\"']*")
_BEARER = re.compile(r"(?i)\b(bearer[ .])[A-Za-z0-9._~+/=-]+")


def redact_query(text: str) -> str:
    """``text`` (a URL, query string or log line) with token values replaced by ``***``."""
    return _BEARER.sub(r"\1***", _TOKEN_PARAM.sub(r"\1***", text))


class RedactTokens(logging.Filter):
    """Rewrites token values in every record it sees; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.args, dict):
            record.args = {
                k: redact_query(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


DEFAULT_LOGGERS = ("uvicorn.error", "uvicorn.access", "hypercorn.error", "hypercorn.access")


def install(loggers: Iterable[str] = DEFAULT_LOGGERS) -> RedactTokens:
    """Add one :class:`RedactTokens` to ``loggers`` and every root handler (idempotent)."""
    existing = next((f for f in logging.getLogger().filters if isinstance(f, RedactTokens)), None)
    flt = existing or RedactTokens()
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in loggers]
    targets.append(logging.getLogger())
    targets.extend(logging.getLogger().handlers)
    for target in targets:
        if flt not in target.filters:
            target.addFilter(flt)
    return flt
