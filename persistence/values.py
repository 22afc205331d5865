"""Checks on values handed to the store, made before they are queued.

A bad value caught here fails only its own call; once queued it would fail the
whole group-commit batch it landed in.
"""

from __future__ import annotations

import json
import time
from typing import Any


class UnstorableValue(ValueError):
    """A value the store refuses to hold: it could not be read back as strict JSON.

    Not a :class:`~persistence.store.StoreError`: nothing is wrong with the store, and
    the write it came with may still be committed (see ``SQLiteStore.append``).
    """


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
        raise UnstorableValue(f"{what} is not valid Unicode text: {exc}") from None


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


def check_at_least(value: object, what: str, least: int) -> None:
    """An ``int`` (not a ``bool``) no smaller than ``least`` (a limit, a count to keep)."""
    check_int(value, what)
    if value < least:  # type: ignore[operator]
        raise ValueError(f"{what} must be >= {least}, got {value}")


def as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


def dumps(value: object, what: str) -> str:
    """``value`` as strict JSON text, exactly what a reader gets back.

    Strict: no NaN or infinities (``allow_nan=False``), every string valid Unicode
    (a lone surrogate has no UTF-8 encoding, so it is refused rather than escaped:
    escaped, it would be read back as the same unencodable string), nesting within
    Python's recursion limit, JSON types only.

    Raises:
        TypeError: ``value`` is not a dict.
        UnstorableValue: anything inside it is not strict JSON.
    """
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError included
        raise UnstorableValue(f"{what} is not strict JSON: {exc}") from None
    return text


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (valid pairs are joined)."""
    if text.isascii():  # the common case, without encoding a copy
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _valid_strings(value: Any) -> Any:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_valid_strings(item) for item in value]
    if isinstance(value, dict):
        return {valid_text(k): _valid_strings(v) for k, v in value.items()}
    return value


def loads(text: str) -> Any:
    """Parse a stored JSON column.

    Rows written before :func:`dumps` was strict may hold lone surrogates as ``\\udXXX``
    escapes; they are read back as U+FFFD, so that every frame read can be encoded.

    Raises:
        ValueError: ``text`` is not JSON.
    """
    value = json.loads(text)
    if "\\ud" in text or "\\uD" in text:
        value = _valid_strings(value)
    return value
