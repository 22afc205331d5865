"""Checks on values handed to the store, made before they are queued.

A bad value caught here fails only its own call; once queued it would fail the
whole group-commit batch it landed in.
"""

from __future__ import annotations

import json
import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_text(value: object, what: str) -> None:
    # Checked before queueing: a value SQLite cannot bind (a lone surrogate cannot be
    # encoded as UTF-8) would otherwise fail the whole batch it lands in.
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode text: {exc}") from None


def check_opt_text(value: object, what: str) -> None:
    if value is not None:
        check_text(value, what)


def check_key(org: str, name: str) -> None:
    check_text(org, "org")
    check_text(name, "name")


def check_record(org: str, t: str, id: str) -> None:
    for value, what in ((org, "org"), (t, "t"), (id, "id")):
        check_text(value, what)


def check_int(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be int, got {type(value).__name__}")


def as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


def dumps(value: object, what: str) -> str:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    # ensure_ascii (the default) keeps lone surrogates out of the TEXT column;
    # allow_nan=False refuses what JSON clients could not parse.
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
