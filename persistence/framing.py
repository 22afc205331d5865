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
from collections.abc import Callable
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
    draft: FrameDraft, stored: dict[str, JSON] | None, stored_covered: int | None = None
) -> FrameDraft | None:
    """The frame to log for ``draft`` given the stored record, or ``None`` (nothing new).

    Args:
        stored: The stored record's fields (``None``: no record row).
        stored_covered: The update id the stored row covers (``None``: no row).

    Rules:

    * a draft from a view older than the row's is stale: nothing new. A draft with
      an ``update_id`` was drafted by a node that holds every update of the doc up to
      it (it framed other nodes' changes, or a doc it just loaded); a row covering a
      newer update was framed from a newer view, which holds those updates too. Logging
      the stale draft would move the record back (another node drafting "open" after
      the row moved on to "done") and then forward again when its view catches up;
    * a delete is always logged: it is an explicit act (a mutation, a delete call),
      never drafted by several nodes from their views, and a record deleted before
      its first frame still gets its ``d`` (harmless to a client that never saw it);
    * an insert of a record that has a row: an update with the difference;
    * an update: only the fields whose value differs from the row (all of ``p`` when
      there is no row); none left: nothing new.

    A draft without ``update_id`` (a node's own change, drafted before its update's
    id is known, queued after that update) is never refused as stale: refusing it
    would lose the change, since no other node frames a change as its own.
    """
    if draft.op == "d" or stored is None:
        return draft
    if (
        draft.update_id is not None
        and stored_covered is not None
        and draft.update_id < stored_covered
    ):
        return None
    if draft.op == "i":
        p = diff(stored, draft.record if draft.record is not None else {})
        return dataclasses.replace(draft, op="u", p=p) if p else None
    p = {key: value for key, value in draft.p.items() if _is_new(key, value, draft, stored)}
    if len(p) == len(draft.p):
        return draft
    return dataclasses.replace(draft, p=p) if p else None


def _removes(key: str, value: JSON, draft: FrameDraft) -> bool:
    """A null in ``p`` is a removed field, unless the draft's record holds the field
    with a null value (a value projected as null, such as NaN from a Yjs client)."""
    return value is None and (draft.record is None or key not in draft.record)


def _is_new(key: str, value: JSON, draft: FrameDraft, stored: dict[str, JSON]) -> bool:
    if _removes(key, value, draft):
        return key in stored
    return key not in stored or not same(stored[key], value)


def fold(stored: dict[str, JSON] | None, frame: FrameDraft) -> dict[str, JSON] | None:
    """The record row after ``frame`` (``None``: no row): the stored fields with ``p``
    applied (null removes), the whole record on an insert. The row is therefore always
    what the frames say, whichever node's view each frame was drafted from."""
    if frame.op == "d":
        return None
    if frame.op == "i" or stored is None:
        base: dict[str, JSON] = {}
    else:
        base = dict(stored)
    for key, value in frame.p.items():
        if _removes(key, value, frame):
            base.pop(key, None)
        else:
            base[key] = value
    return base


def covered(
    frame: FrameDraft,
    riding_on: int | None,
    doc_newest: Callable[[str], int],
    stored: int | None,
) -> int:
    """The update id the record row covers once ``frame`` is folded into it.

    The draft's own ``update_id`` if it has one; else the update it is logged with
    (``riding_on``: ``append(frames=…)``); else its record doc's newest update at this
    point of the transaction (``doc_newest(name)``, only called then: ``log_frames``). Never
    below what the row covered already (``stored``; ``None``: no row). This is what
    :meth:`~persistence.store.Store.stale_records` compares with the doc's log.
    """
    if frame.update_id is not None:
        update_id = frame.update_id
    elif riding_on is not None:
        update_id = riding_on
    else:
        update_id = doc_newest(f"{frame.t}/{frame.id}")
    return update_id if stored is None else max(update_id, stored)
