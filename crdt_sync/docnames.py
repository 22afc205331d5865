"""Document names: what a room, a record and a URL path may be called.

A name is the URL path after ``/yjs/`` (or ``/docs/``), percent-decoded. It may
contain slashes (``issue/123``) and any printable Unicode (``héllo wörld``). A
record ``(t, id)`` is the doc ``t/id``: ``t`` before the first slash, ``id`` all
the rest.
"""

from __future__ import annotations

import unicodedata

MAX_DOC_NAME_CHARS = 512


class InvalidDocName(ValueError):
    """A name that cannot identify a document."""


def validate_doc_name(name: str) -> str:
    """Return ``name`` if it is a valid document name.

    Raises:
        InvalidDocName: empty, too long, or containing control characters.
    """
    if not name:
        raise InvalidDocName("document name is empty")
    if len(name) > MAX_DOC_NAME_CHARS:
        raise InvalidDocName(f"document name longer than {MAX_DOC_NAME_CHARS} characters")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidDocName(f"document name contains control character {ord(char):#x}")
    return name


def split_record(name: str) -> tuple[str, str] | None:
    """``(t, id)`` of a record doc, or ``None`` for a plain document (no slash)."""
    t, slash, record_id = name.partition("/")
    if not slash or not t or not record_id:
        return None
    return t, record_id
