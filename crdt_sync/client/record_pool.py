"""The local pool of a :class:`~crdt_sync.client.frames.FrameClient`. Pure: no I/O.

Two layers:

* *confirmed*: the records as the server's frames (or ``/sync/v1/records``) say, each
  with the sid of the last frame applied to it, and the feed cursor (the newest sid
  the client has seen);
* *optimistic*: the client's own mutations, in order, laid over the confirmed records
  until the server has answered them and (for an applied one) its frame has been
  applied, so that a local change never flickers back to the old value in between.

What an app reads (:meth:`RecordPool.get`, :meth:`RecordPool.records`) is both layers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .offline_queue import QueuedMutation

Key = tuple[str, str]


def apply_fields(before: dict[str, Any] | None, op: str, p: dict[str, Any]) -> dict | None:
    """A record's fields after a frame or mutation ``op`` with ``p`` (``None``: no record).

    ``None`` in ``p`` removes a field (how frames report it); an insert is the whole record.
    """
    if op == "d":
        return None
    if op == "i":
        return {k: copy.deepcopy(v) for k, v in p.items() if v is not None}
    if before is None:
        return None  # an update of a record this pool does not hold
    after = dict(before)
    for name, value in p.items():
        if value is None:
            after.pop(name, None)
        else:
            after[name] = copy.deepcopy(value)
    return after


class RecordPool:
    """Confirmed records, the feed cursor and the optimistic layer.

    Args:
        types: The record types kept (``None``: every type).
    """

    def __init__(self, types: Iterable[str] | None = None) -> None:
        self.types = frozenset(types) if types is not None else None
        self.confirmed: dict[Key, dict[str, Any]] = {}
        self.sids: dict[Key, int] = {}
        #: The newest sid seen; ``None`` until the pool was loaded.
        self.cursor: int | None = None
        self._optimistic: dict[str, QueuedMutation] = {}  # by client_tx_id, in order
        self._awaiting: dict[str, int] = {}  # acknowledged: the sid of its frame

    def wants(self, t: str) -> bool:
        return self.types is None or t in self.types

    # -- the confirmed layer --------------------------------------------------------

    def clear(self) -> None:
        """Forget every confirmed record and the cursor (the optimistic layer stays)."""
        self.confirmed.clear()
        self.sids.clear()
        self.cursor = None
        for tx in self._awaiting:  # answered: what is loaded next holds them
            self._optimistic.pop(tx, None)
        self._awaiting.clear()

    def load(self, records: Iterable[dict[str, Any]], cursor: int) -> None:
        """Replace the confirmed layer with ``records`` (``/sync/v1/records`` entries)."""
        self.clear()
        for record in records:
            if not self.wants(record["t"]):
                continue
            key = (record["t"], record["id"])
            self.confirmed[key] = dict(record["fields"])
            self.sids[key] = int(record.get("sid") or 0)
        self.cursor = cursor
        self._settle()

    def apply(self, frames: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply frames newer than the cursor, in order; returns those applied (each
        frame once: an older or repeated one is skipped, and so is a frame the record
        already holds from a ``/sync/v1/records`` page read after it)."""
        fresh = []
        for frame in frames:
            sid = frame["sid"]
            if self.cursor is not None and sid <= self.cursor:
                continue
            self.cursor = sid
            if not self.wants(frame["t"]):
                continue
            fresh.append(frame)
            key = (frame["t"], frame["id"])
            if sid <= self.sids.get(key, -1):
                continue
            after = apply_fields(self.confirmed.get(key), frame["op"], frame.get("p") or {})
            if after is None and frame["op"] != "d" and key not in self.confirmed:
                after = dict(frame.get("p") or {})  # an update of a record never seen whole
            if after is None:
                self.confirmed.pop(key, None)
            else:
                self.confirmed[key] = after
            self.sids[key] = sid
        self._settle()
        return fresh

    def advance(self, sid: int) -> None:
        """Every frame up to ``sid`` was seen (``delta``'s ``next``: some were filtered)."""
        if self.cursor is None or sid > self.cursor:
            self.cursor = sid
            self._settle()

    # -- the optimistic layer -------------------------------------------------------

    def add(self, mutation: QueuedMutation) -> None:
        """Lay a local mutation over the confirmed records."""
        self._optimistic[mutation.client_tx_id] = mutation

    def acknowledged(self, client_tx_id: str, sid: int | None) -> None:
        """The server applied it: keep it until its frame ``sid`` has been applied."""
        mutation = self._optimistic.get(client_tx_id)
        if mutation is None:
            return
        if sid is None or not self.wants(mutation.t):
            del self._optimistic[client_tx_id]
            return
        self._awaiting[client_tx_id] = sid
        self._settle()

    def discard(self, client_tx_id: str) -> None:
        """The server refused it: the confirmed record shows through again."""
        self._optimistic.pop(client_tx_id, None)
        self._awaiting.pop(client_tx_id, None)

    @property
    def pending(self) -> list[QueuedMutation]:
        return list(self._optimistic.values())

    def _settle(self) -> None:
        if self.cursor is None:
            return
        done = [tx for tx, sid in self._awaiting.items() if sid <= self.cursor]
        for tx in done:
            del self._awaiting[tx]
            self._optimistic.pop(tx, None)

    # -- reads ------------------------------------------------------------------------

    def get(self, t: str, record_id: str) -> dict[str, Any] | None:
        """A record's fields as the app sees them (confirmed plus local changes)."""
        key = (t, record_id)
        fields = self.confirmed.get(key)
        for m in self._optimistic.values():
            if (m.t, m.id) == key:
                fields = apply_fields(fields, m.op, m.p)
        return None if fields is None else copy.deepcopy(fields)

    def records(self, t: str | None = None) -> dict[Key, dict[str, Any]]:
        """Every record as the app sees it, by ``(t, id)``."""
        keys = dict.fromkeys(self.confirmed)
        keys.update(dict.fromkeys((m.t, m.id) for m in self._optimistic.values()))
        out = {}
        for key in keys:
            if t is not None and key[0] != t:
                continue
            fields = self.get(*key)
            if fields is not None:
                out[key] = fields
        return out
