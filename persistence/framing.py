"""What a frame draft becomes against the record the store already holds.

Several nodes may frame the same change of a record (each holds the doc and sees the
update), and a node may draft from a baseline that another node has moved on since.
So the store, inside the transaction that logs a draft, compares it with the stored
record row (the cluster's one truth of what has been framed) and logs only what is
new: :func:`settle`. Every backend calls it; it is pure (no I/O, no pycrdt).

This is what makes a change appear in the frame log exactly once whichever nodes its
edits came through, and keeps ``records`` equal to what the frames say.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from persistence.store import FrameDraft

JSON = Any


def same(a: JSON, b: JSON) -> bool:
    """JSON equality that tells ``true`` from ``1`` (Python's ``==`` does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def diff(before: dict[str, JSON] | None, after: dict[str, JSON]) -> dict[str, JSON]:
    """The SyncFrame ``p`` from ``before`` to ``after``: changed fields, removed ones as null.

    With no ``before`` (a new record) it is the whole of ``after``.
    """
    if before is None:
        return dict(after)
    p = {
        key: value
        for key, value in after.items()
        if key not in before or not same(before[key], value)
    }
    for key in before.keys() - after.keys():
        p[key] = None
    return p


def settle(
    draft: FrameDraft, stored: dict[str, JSON] | None, stored_update_id: int | None
) -> FrameDraft | None:
    """The frame to log for ``draft`` given the stored record, or ``None`` (nothing new).

    Args:
        stored: The stored record's fields (``None``: no record row).
        stored_update_id: The update id that row covers (``None``: no row).

    Rules, in order:

    * stale: the draft covers an update id (not ``None``) that the stored row already
      covers: another writer framed that state (or a later one) first;
    * a delete of a record that has no row: nothing to delete;
    * an insert of a record that has a row: an update with the difference;
    * an update: only the fields whose value differs from the row (all of ``p`` when
      there is no row); none left: nothing new.
    """
    if (
        draft.update_id is not None
        and stored_update_id is not None
        and stored_update_id >= draft.update_id
    ):
        return None
    if draft.op == "d":
        return draft if stored is not None else None
    record = draft.record if draft.record is not None else {}
    if stored is None:
        return draft
    if draft.op == "i":
        p = diff(stored, record)
        return dataclasses.replace(draft, op="u", p=p) if p else None
    p = {
        key: value
        for key, value in draft.p.items()
        if not same(stored.get(key), value) or (value is None and key in stored)
    }
    if len(p) == len(draft.p):
        return draft
    return dataclasses.replace(draft, p=p) if p else None
