"""Document versions: what every backend checks before storing one, and the row shape.

A version is an immutable copy of a doc's whole state (a Yjs update) taken at one
moment, with who edited since the version before it and an optional label. Version
ids are assigned by the store when the version is committed: one sequence for every
doc of the store (per backend: a counter, an ``AUTOINCREMENT`` column, a PostgreSQL
sequence), so ids grow per doc in creation order and are never reused, not after a
version or its whole doc is deleted.

The checks here run on the event loop before anything is queued (a bad value fails
its own call only, as in :mod:`persistence.values`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pycrdt import get_state

from persistence import values
from persistence.store import VersionInfo

__all__ = [
    "MAX_AUTHORS",
    "MAX_LABEL_CHARS",
    "CheckedVersion",
    "check_list_args",
    "check_version",
    "info_from_row",
]

#: Longest label, in characters.
MAX_LABEL_CHARS = 200
#: Most authors stored with one version (the first ones, in the order given).
MAX_AUTHORS = 100


class CheckedVersion:
    """A version ready to be written: its columns, computed and checked."""

    __slots__ = ("at", "authors_json", "label", "state", "state_vector")

    def __init__(
        self, state: bytes, state_vector: bytes, authors_json: str, label: str | None, at: int
    ) -> None:
        self.state = state
        self.state_vector = state_vector
        self.authors_json = authors_json
        self.label = label
        self.at = at


def check_version(
    org: str, name: str, state: object, authors: Sequence[str], label: str | None, at: int
) -> CheckedVersion:
    """Check the arguments of ``put_version``; compute the state vector of ``state``.

    Raises:
        TypeError: a value of the wrong type.
        ValueError: ``state`` is not a Yjs update, a label longer than
            :data:`MAX_LABEL_CHARS` or with a NUL, more than :data:`MAX_AUTHORS`
            authors, an author with a NUL.
        persistence.values.UnstorableValue: text that is not valid Unicode.
    """
    values.check_key(org, name)
    data = values.as_bytes(state, "state")
    values.check_int(at, "at")
    if isinstance(authors, str):
        raise TypeError("authors must be a sequence of str, not a str")
    authors = list(authors)
    if len(authors) > MAX_AUTHORS:
        raise ValueError(f"at most {MAX_AUTHORS} authors, got {len(authors)}")
    for author in authors:
        values.check_text(author, "author")
        if "\x00" in author:
            raise ValueError("an author contains NUL")
    values.check_opt_text(label, "label")
    if label is not None:
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"label longer than {MAX_LABEL_CHARS} characters")
        if "\x00" in label:
            raise ValueError("label contains NUL")
    try:
        state_vector = get_state(data)
    except Exception as exc:  # pycrdt raises plain exceptions on a malformed update
        raise ValueError(f"state is not a Yjs update: {exc}") from None
    authors_json = json.dumps(authors, ensure_ascii=False, separators=(",", ":"))
    return CheckedVersion(data, state_vector, authors_json, label, at)


def check_list_args(org: str, name: str, before: int | None, limit: int) -> None:
    values.check_key(org, name)
    if before is not None:
        values.check_int(before, "before")
    values.check_at_least(limit, "limit", 1)


def info_from_row(
    version: int,
    name: str,
    created_at: int,
    authors_json: str,
    label: str | None,
    state_vector: bytes,
    size: int,
) -> VersionInfo:
    """A :class:`~persistence.store.VersionInfo` from its stored columns."""
    authors = values.loads(authors_json)
    return VersionInfo(
        version=int(version),
        name=name,
        created_at=int(created_at),
        authors=tuple(str(a) for a in authors) if isinstance(authors, list) else (),
        label=label,
        state_vector=bytes(state_vector),
        size=int(size),
    )
