"""What of a Yjs update a doc could not integrate yet (its missing dependencies).

yrs keeps the structs of an update whose dependencies it has not seen (and deletions
of items it does not have) in the doc's pending state until they arrive, possibly
forever; pycrdt exposes no accessor for it. What is pending is found from public
functions: ``pycrdt.get_update(update, doc_state_vector)`` keeps exactly the structs
the doc's state vector does not cover (the integrated ones are below it), and the
update's delete set, whose ranges past the state vector are the pending deletions.
``Doc.get_update()`` never includes pending state, so a doc rebuilt from it is the
same document without what was pending.
"""

from __future__ import annotations

from pycrdt import get_update


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def var_uint(self) -> int:
        value = shift = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7


def state_vector(encoded: bytes) -> dict[int, int]:
    """Decode a (v1) state vector: client id -> next expected clock."""
    reader = _Reader(encoded)
    return {reader.var_uint(): reader.var_uint() for _ in range(reader.var_uint())}


def missing_part(update: bytes, doc_state: bytes) -> bytes | None:
    """The part of ``update`` a doc with state vector ``doc_state`` holds as pending.

    Args:
        update: A v1 update that was applied to the doc.
        doc_state: The doc's state vector after applying it.

    Returns:
        ``None`` if the doc integrated all of it, else what of it is still pending (an
        update: its size is what the doc holds for it).
    """
    try:
        rest = get_update(update, doc_state)
    except BaseException as exc:
        # yrs panics surface as pyo3's PanicException (a BaseException). The doc took
        # the update, so this should not happen; if it does, count all of it.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        return update
    if rest[0] != 0:  # structs the state vector does not cover: waiting for dependencies
        return rest
    # No structs: are all deletions within what the doc has?
    known = state_vector(doc_state)
    reader = _Reader(rest, 1)
    try:
        for _ in range(reader.var_uint()):
            client = reader.var_uint()
            have = known.get(client, 0)
            for _ in range(reader.var_uint()):
                clock = reader.var_uint()
                if clock + reader.var_uint() > have:
                    return rest
    except IndexError:  # not what yrs encodes; count it rather than trust it
        return rest
    return None
