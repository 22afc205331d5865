"""Restore as a forward change: the update that makes a doc's content a version's again.

Pure (pycrdt only, no I/O): :func:`restore_update` takes the doc's current state and
a version's state, both Yjs updates, and returns one Yjs update that, applied on top
of the current state, leaves its content equal to the version's. It is a normal
update, made of new operations by a fresh client id: applied through the live room
it reaches every connected editor like any other edit; no client reloads, nothing
is duplicated, and their own undo history (of their own operations) stays theirs.

How: a scratch doc D is built from the version, and everything the doc gained since
(the current state diffed against the version's state vector: insertions, and the
deletions in its delete set) is applied to D under an origin that an
:class:`pycrdt.UndoManager` tracks, scoped to every root type. Undoing it leaves D's
content equal to the version's, expressed as new operations on top of the current
state (insertions deleted again, deleted content inserted anew). D keeps deleted
items (``skip_gc``) so that what the doc deleted since can be brought back. The
result is D's update relative to the current state vector.

Root types need a type to be scoped: each is inferred from the content (see
:func:`crdt_sync.records.projection.infer_root_types`), in the version or now.
"""

from __future__ import annotations

from pycrdt import Array, Doc, Map, Text, UndoManager, XmlFragment

from .records.projection import infer_root_types

__all__ = ["restore_update"]

#: The origin under which the doc's later changes are replayed into the scratch doc.
_REPLAY = "crdt-sync:restore-replay"
#: Undo steps at most (everything is replayed in one transaction: one step).
_MAX_UNDO_STEPS = 16


def restore_update(current: bytes, version: bytes) -> bytes | None:
    """The update that brings a doc in state ``current`` back to ``version``'s content.

    Args:
        current: The doc's whole state now (``doc.get_update()``).
        version: The version's whole state (a past state of the same doc).

    Returns:
        The update to apply to the doc, or ``None`` if its content is the version's
        already (nothing changed since, or only what the version holds).

    Raises:
        ValueError: either state is not a Yjs update.
    """
    now = _doc(current, "current state")
    scratch = _doc(version, "version state", skip_gc=True)
    types = _root_types(now, scratch)
    scopes = [scratch.get(key, type=kind) for key, kind in sorted(types.items())]
    if not scopes:
        return None
    undo = UndoManager(scopes=scopes, capture_timeout_millis=0)
    undo.include_origin(_REPLAY)
    since = now.get_update(scratch.get_state())
    with scratch.transaction(origin=_REPLAY):
        scratch.apply_update(since)
    steps = 0
    while undo.can_undo() and steps < _MAX_UNDO_STEPS:
        undo.undo()
        steps += 1
    if steps == 0:
        return None
    return scratch.get_update(now.get_state())


def _doc(state: bytes, what: str, *, skip_gc: bool = False) -> Doc:
    doc = Doc(skip_gc=skip_gc)
    try:
        doc.apply_update(state)
    except Exception as exc:  # pycrdt raises plain exceptions on a malformed update
        raise ValueError(f"{what} is not a Yjs update: {exc}") from None
    return doc


def _root_types(now: Doc, version: Doc) -> dict[str, type]:
    """The type of every root that holds something now or in the version."""
    keys = sorted(set(now.keys()) | set(version.keys()))
    found: dict[str, type] = {}
    for doc in (version, now):
        for key, kind in infer_root_types(doc, keys).items():
            if kind is not None:
                found.setdefault(key, kind)
    return {k: v for k, v in found.items() if v in (Text, Map, Array, XmlFragment)}
