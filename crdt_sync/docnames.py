"""Document names: what a room, a record and a URL path may be called.

A name is the URL path after ``/yjs/`` (or ``/docs/``), percent-decoded. It may
contain slashes (``issue/123``), spaces and any visible Unicode (``héllo wörld``),
1 to 512 characters, under the character rule of :mod:`crdt_sync.inputs` (no
control, format -- bidi overrides, zero-width characters --, surrogate, private-use,
unassigned or line/paragraph-separator characters): a name must look like what it
is, in a URL bar, a log line and a list of documents. A record ``(t, id)`` is the
doc ``t/id``: ``t`` before the first slash, ``id`` all the rest.
"""

from __future__ import annotations

from .inputs import InputError, check_name

MAX_DOC_NAME_CHARS = 512


class InvalidDocName(InputError):
    """A name that cannot identify a document."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_doc_name", detail)


def validate_doc_name(name: str) -> str:
    """Return ``name`` if it is a valid document name.

    Raises:
        InvalidDocName: empty, too long, or holding a character the name rule refuses.
    """
    try:
        return check_name(name, "document name", max_chars=MAX_DOC_NAME_CHARS)
    except InputError as exc:
        raise InvalidDocName(exc.detail) from None


def split_record(name: str) -> tuple[str, str] | None:
    """``(t, id)`` of a record doc, or ``None`` for a plain document (no slash)."""
    t, slash, record_id = name.partition("/")
    if not slash or not t or not record_id:
        return None
    return t, record_id
