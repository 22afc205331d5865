"""Paging of :meth:`persistence.store.Store.list_docs`, the same for every backend.

A page is the docs after the cursor's name, in name order (code point order, which is
the byte order of UTF-8: SQLite's BINARY collation and PostgreSQL's ``COLLATE "C"``).
The cursor is the last name of the previous page, base64url without padding: opaque
to callers, and checked strictly on the way back in.
"""

from __future__ import annotations

import base64
import binascii
import re

from persistence.store import DocInfo

__all__ = ["decode_cursor", "encode_cursor", "prefix_end", "split_page"]

_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The name ``cursor`` stands for.

    Raises:
        ValueError: ``cursor`` is not one :func:`encode_cursor` returned.
    """
    # urlsafe_b64decode silently drops characters outside the alphabet: check first.
    if not cursor or not _CURSOR_CHARS.fullmatch(cursor):
        raise ValueError(f"invalid cursor {cursor!r}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return raw.decode("utf-8")
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``.

    Names compare in code point order, so ``prefix <= name < prefix_end(prefix)``
    selects exactly the names starting with ``prefix`` and can use the primary key
    index (LIKE would need escaping and, being case-insensitive for ASCII in SQLite,
    could not). ``None``: no upper bound (``prefix`` is empty or all U+10FFFF).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop())
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters
                code = 0xE000
            return "".join(chars) + chr(code)
    return None


def split_page(rows: list[DocInfo], limit: int) -> tuple[list[DocInfo], str | None]:
    """``(page, next cursor)`` from up to ``limit + 1`` rows read in name order: the
    extra row only says that there is a next page (``None``: this is the last)."""
    page = rows[:limit]
    return page, (encode_cursor(page[-1].name) if len(rows) > limit else None)
