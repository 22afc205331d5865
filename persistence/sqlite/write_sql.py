"""The SQL of writes: what the writer thread runs inside its transaction.

An :class:`Op` is one queued write (or a barrier); :func:`apply` executes a batch of
them in queue order inside the writer's ``BEGIN IMMEDIATE`` (see
:mod:`persistence.sqlite.writer`), setting each one's result.

Frames: a :class:`~persistence.store.FrameBatch` is checked and serialised on the
event loop (:func:`prepare`, so a bad value fails only its own call) and written by the
writer thread inside the transaction of the op it rides on (:func:`write_frames`): each
frame gets the next ``sid`` of its org (:class:`SidSequence`), its record's row in
``records`` is replaced by the projection the frame leaves behind (or deleted with
``op="d"``), and the batch's idempotency key remembers the sid of its last frame.

Sids are per tenant: org ``a``'s frames are numbered 1, 2, 3, ... whatever other orgs
write, so a client's sids say nothing about other tenants' activity. ``frame_seq``
holds each org's last assigned sid; it only grows, so a sid is never reused after
trims or deletes.

Update ids are assigned here too, inside the transaction (:class:`UpdateIds`): the
next id of the file's ``updates`` sequence, and as ``prev_update_id`` the doc's
``documents.last_update_id``, both read under the transaction's write lock (``BEGIN
IMMEDIATE``). Nothing is handed out before the commit and nothing is kept between
transactions, so several stores (processes) may append to one file.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from pycrdt import merge_updates

from persistence import framing, outbox, values
from persistence.framing import fold, same, settle
from persistence.prepared import PreparedBatch
from persistence.store import Committed, Frame, StoreReadError

logger = logging.getLogger(__name__)


class Kind(enum.Enum):
    APPEND = "append"
    COMPACT = "compact"
    DELETE = "delete"
    FRAME = "frame"
    FRAMES = "frames"  # a FrameBatch on its own (coalesced frames, idempotency keys)
    MUTATION = "mutation"
    TRIM = "trim"
    FLUSH = "flush"  # barrier: commit what came before, report failures
    CALL = "call"  # barrier: commit what came before, then run a function (tests, maintenance)
    STOP = "stop"  # barrier: commit what came before, then close the connection and exit


BARRIERS = frozenset({Kind.FLUSH, Kind.CALL, Kind.STOP})


@dataclass(slots=True, eq=False)
class Op:
    """One write queued for the writer thread (or a barrier), and its outcome."""

    kind: Kind
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    result: Any = None
    error: BaseException | None = None
    batch: PreparedBatch | None = None  # frames logged in the same transaction
    size: int = 0  # bytes counted against max_queued_bytes while it is queued
    more: bool = False  # not the last op of an atomic group: commit with the next one


class SidSequence:
    """The per-org sid counters of one writer transaction.

    Each org's counter is read once per transaction (an index lookup each in
    ``frame_seq`` and ``frames``), advanced in memory while the transaction logs
    frames, and written back by :meth:`save` before the commit. Nothing outlives the
    transaction: a rolled-back batch leaves ``frame_seq`` as it was, and a second
    store writing the same file reads the counters afresh under its own write lock.
    """

    __slots__ = ("_conn", "_last")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._last: dict[str, int] = {}

    def take(self, org: str, count: int = 1) -> int:
        """Reserve the next ``count`` sids of ``org``; return the first of them."""
        last = self._last.get(org)
        if last is None:
            # The frames' own maximum too: a row written around this module (an older
            # tool, a test) must not be overwritten; the unique (org, sid) index
            # would fail the batch instead.
            row = self._conn.execute(
                "SELECT max(coalesce((SELECT last_sid FROM frame_seq WHERE org = ?), 0),"
                " coalesce((SELECT max(sid) FROM frames WHERE org = ?), 0))",
                (org, org),
            ).fetchone()
            last = int(row[0])
        self._last[org] = last + count
        return last + 1

    def save(self) -> None:
        """Write the counters advanced by :meth:`take` (inside the same transaction)."""
        if self._last:
            self._conn.executemany(
                "INSERT INTO frame_seq (org, last_sid) VALUES (?, ?) ON CONFLICT (org) "
                "DO UPDATE SET last_sid = max(last_sid, excluded.last_sid)",
                list(self._last.items()),
            )
            self._last.clear()


class UpdateIds:
    """The update ids of one writer transaction: the file's sequence, each doc's newest.

    The sequence is read once per transaction (``sqlite_sequence``, which
    ``AUTOINCREMENT`` keeps above every id ever inserted, so ids are never reused
    after deletes and compactions) and each doc's newest id once (its
    ``documents.last_update_id``), then advanced in memory. Rows are inserted with
    explicit ids, which advances ``sqlite_sequence`` in the same transaction; the
    appends write each doc's newest id back with its ``documents`` row.
    """

    __slots__ = ("_conn", "_missing", "_newest", "_next")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._next: int | None = None
        self._newest: dict[tuple[str, str], int] = {}
        self._missing: set[tuple[str, str]] = set()  # docs without a documents row

    def newest(self, org: str, name: str) -> int:
        """The doc's newest update id at this point of the transaction (0: none)."""
        key = (org, name)
        newest = self._newest.get(key)
        if newest is None:
            row = self._conn.execute(
                "SELECT last_update_id FROM documents WHERE org = ? AND name = ?", key
            ).fetchone()
            if row is None:
                self._missing.add(key)
            newest = self._newest[key] = int(row[0]) if row is not None else 0
        return newest

    def take(self, org: str, name: str) -> tuple[int, int]:
        """A new update of the doc: ``(its id, the doc's previous newest id)``."""
        if self._next is None:
            row = self._conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'updates'), 0),"
                " coalesce((SELECT max(id) FROM updates), 0))"
            ).fetchone()
            self._next = int(row[0]) + 1
        prev = self.newest(org, name)
        update_id = self._next
        self._next += 1
        self._newest[(org, name)] = update_id
        return update_id, prev

    def created(self, org: str, name: str) -> bool:
        """Whether the doc had no ``documents`` row when this transaction last looked
        (new, or deleted: it may have a tombstone); the caller gives it one now."""
        self.newest(org, name)
        key = (org, name)
        if key in self._missing:
            self._missing.discard(key)
            return True
        return False

    def forget(self, org: str, name: str) -> None:
        """The doc's row is gone (deleted in this transaction): a new doc of that name
        starts with no history."""
        key = (org, name)
        self._newest[key] = 0
        self._missing.add(key)


def write_frames(
    conn: sqlite3.Connection,
    batch: PreparedBatch,
    sids: SidSequence,
    ids: UpdateIds,
    *,
    update_id: int | None,
    outbox: bool = False,
) -> list[Frame]:
    """Write ``batch`` inside the caller's transaction; return the frames logged, with
    their sids: what is new of each draft against its stored record row
    (:func:`persistence.framing.settle`), folded into the row
    (:func:`persistence.framing.fold`).

    Args:
        sids: The transaction's sid counters (the caller saves them before committing).
        ids: The transaction's update ids: a draft without ``update_id`` logged on its
            own covers its doc's newest update at this point of the queue.
        update_id: The update the batch rides on (``None``: none): the covered update
            id of records whose draft leaves it ``None``.
        outbox: Also give each frame its webhook outbox row (:mod:`persistence.outbox`).
    """
    org = batch.org
    committed = []
    for prepared in batch.frames:
        stored, stored_covered = _record_row(conn, org, prepared.draft.t, prepared.draft.id)
        d = settle(prepared.draft, stored, stored_covered)
        if d is None:
            continue  # nothing new against the row
        sid = sids.take(org)
        p_text = prepared.p if d is prepared.draft else values.dumps(d.p, "p")
        conn.execute(
            "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (org, sid, d.t, d.id, d.op, p_text, d.who, d.at, prepared.ctx),
        )
        if outbox:
            _outbox_row(conn, org, sid, d.t, d.id, d.op, p_text, d.who, d.at, prepared.ctx)
        fields = fold(stored, d)
        if fields is None:
            conn.execute("DELETE FROM records WHERE org = ? AND t = ? AND id = ?", (org, d.t, d.id))
        else:
            covered = framing.covered(
                d, update_id, lambda name: ids.newest(org, name), stored_covered
            )
            record = (
                prepared.record
                if d.record is not None and same(fields, d.record)
                else values.dumps(fields, "record")
            )
            conn.execute(
                "INSERT INTO records (org, t, id, fields, sid, update_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org, t, id) DO UPDATE SET "
                "fields = excluded.fields, sid = excluded.sid, "
                "update_id = excluded.update_id, updated_at = excluded.updated_at",
                (org, d.t, d.id, record, sid, covered, d.at),
            )
        committed.append(Frame(sid, org, d.t, d.id, d.op, d.p, d.who, d.at, d.ctx))
    if batch.mutation is not None:
        client_tx_id, result = batch.mutation
        conn.execute(
            "INSERT INTO mutations (org, client_tx_id, result, at, sid) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (org, client_tx_id) DO NOTHING",
            (org, client_tx_id, result, values.now_ms(), committed[-1].sid if committed else None),
        )
    return committed


_INSERT_OUTBOX = (
    "INSERT INTO webhook_outbox (org, sid, t, rid, frame, created_at) VALUES (?, ?, ?, ?, ?, ?)"
)


def _outbox_row(
    conn: sqlite3.Connection,
    org: str,
    sid: int,
    t: str,
    id: str,
    op: str,
    p_text: str,
    who: str | None,
    at: int,
    ctx_text: str,
) -> None:
    text = outbox.frame_json(id, op, p_text, who, at, ctx_text)
    conn.execute(_INSERT_OUTBOX, (org, sid, t, id, text, values.now_ms()))


def _record_row(
    conn: sqlite3.Connection, org: str, t: str, id: str
) -> tuple[dict[str, Any] | None, int | None]:
    """The stored record's fields and covered update id (``None, None``: no row)."""
    row = conn.execute(
        "SELECT fields, update_id FROM records WHERE org = ? AND t = ? AND id = ?", (org, t, id)
    ).fetchone()
    if row is None:
        return None, None
    return values.loads(row[0]), int(row[1])


# -- the ops of one writer transaction ---------------------------------------------------

_UPSERT_DOC = (
    "INSERT INTO documents (org, name, created_at, updated_at, last_update_id)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (org, name) DO UPDATE SET"
    " updated_at = max(updated_at, excluded.updated_at),"
    " last_update_id = excluded.last_update_id"
)


def apply(conn: sqlite3.Connection, ops: list[Op], *, outbox: bool = False) -> None:
    """Execute ``ops`` in order, setting each one's result (or, for a compaction that
    cannot read its doc's log, its own error: the rest of the batch goes on).

    With ``outbox``, every frame logged also gets its webhook outbox row, in this
    transaction (:mod:`persistence.outbox`)."""
    sids = SidSequence(conn)
    ids = UpdateIds(conn)
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.kind is Kind.APPEND:
            # Consecutive appends (the common case) go in with a few executemany calls.
            j = i + 1
            while j < len(ops) and ops[j].kind is Kind.APPEND:
                j += 1
            assigned = _apply_appends(conn, ids, ops[i:j])
            for op, (update_id, prev) in zip(ops[i:j], assigned, strict=True):
                if op.batch is None:
                    op.result = Committed(update_id, prev, [])
                else:
                    frames = write_frames(
                        conn, op.batch, sids, ids, update_id=update_id, outbox=outbox
                    )
                    op.result = Committed(update_id, prev, frames)
            i = j
            continue
        if op.kind is Kind.COMPACT:
            try:
                compact_doc(conn, ids, *op.args)
            except StoreReadError as exc:
                logger.error("compaction not written: %s", exc)
                op.error = exc
        elif op.kind is Kind.DELETE:
            op.result = delete_doc(conn, ids, *op.args)
        elif op.kind is Kind.FRAMES:
            org, delete = op.args
            if delete is not None:
                delete_doc(conn, ids, org, delete)
            assert op.batch is not None
            op.result = write_frames(conn, op.batch, sids, ids, update_id=None, outbox=outbox)
        elif op.kind is Kind.FRAME:
            org = op.args[0]
            sid = sids.take(org)
            conn.execute(
                "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (org, sid, *op.args[1:]),
            )
            if outbox:
                _outbox_row(conn, org, sid, *op.args[1:])
            op.result = sid
        elif op.kind is Kind.MUTATION:
            conn.execute(
                "INSERT INTO mutations (org, client_tx_id, result, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (org, client_tx_id) DO NOTHING",
                op.args,
            )
        elif op.kind is Kind.TRIM:
            org, keep = op.args
            cur = conn.execute(
                "DELETE FROM frames WHERE org = ? AND sid <= "
                "(SELECT sid FROM frames WHERE org = ? ORDER BY sid DESC LIMIT 1 OFFSET ?)",
                (org, org, keep),
            )
            op.result = cur.rowcount
        else:  # pragma: no cover - barriers never reach here
            raise AssertionError(f"unexpected op {op.kind} in a write batch")
        i += 1
    sids.save()


def _apply_appends(
    conn: sqlite3.Connection, ids: UpdateIds, ops: list[Op]
) -> list[tuple[int, int]]:
    """Insert the updates of ``ops``; return each one's ``(update_id, prev_update_id)``."""
    docs: dict[tuple[str, str], list[int]] = {}
    assigned = []
    rows = []
    for op in ops:
        org, name, data, actor, at = op.args
        span = docs.get((org, name))
        if span is None:
            docs[(org, name)] = [at, at]
        else:
            span[1] = max(span[1], at)
        update_id, prev = ids.take(org, name)
        assigned.append((update_id, prev))
        rows.append((update_id, org, name, data, actor, at))
    # The documents rows first (with each doc's newest id): the update rows reference
    # them. An append re-creates a deleted doc: its tombstone goes.
    created = [key for key in docs if ids.created(*key)]
    conn.executemany(
        _UPSERT_DOC,
        [(o, n, first, last, ids.newest(o, n)) for (o, n), (first, last) in docs.items()],
    )
    if created:
        conn.executemany("DELETE FROM deleted_docs WHERE org = ? AND name = ?", created)
    conn.executemany(
        "INSERT INTO updates (id, org, name, data, actor, at) VALUES (?, ?, ?, ?, ?, ?)", rows
    )
    return assigned


def compact_doc(
    conn: sqlite3.Connection, ids: UpdateIds, org: str, name: str, state: bytes, now: int
) -> None:
    """Fold the doc's log into its snapshot: drop every log row it holds now (in queue
    order: exactly the updates appended before the compaction) and store ``state``
    merged with them.

    The merge is what makes dropping rows safe whatever ``state`` holds: a row another
    writer appended (another process on this file), or one whose update the caller's
    doc lacks, ends up in the snapshot instead of being lost; merging an update that
    ``state`` already holds changes nothing (Yjs updates are idempotent). The old
    snapshot is merged in too: with several writers of the file, another one may have
    folded into it what this caller's ``state`` lacks.

    Raises:
        StoreReadError: a log row is not a readable update (nothing was written).
    """
    key = (org, name)
    upto = ids.newest(org, name)
    if ids.created(org, name):  # it had no documents row
        if (
            conn.execute("SELECT 1 FROM deleted_docs WHERE org = ? AND name = ?", key).fetchone()
            is not None
        ):
            ids.forget(org, name)  # still has none
            return  # deleted: a late compaction must not bring it back
        conn.execute(
            "INSERT INTO documents (org, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (org, name, now, now),
        )
    rows = conn.execute(
        "SELECT id, data FROM updates WHERE org = ? AND name = ? ORDER BY id", key
    ).fetchall()
    old = conn.execute("SELECT data FROM snapshots WHERE org = ? AND name = ?", key).fetchone()
    parts = [state] if old is None or not isinstance(old[0], bytes) else [old[0], state]
    snapshot = state
    if rows or len(parts) > 1:
        for update_id, data in rows:
            if not isinstance(data, bytes):
                raise StoreReadError(
                    f"update {update_id} of {name!r} (org {org!r}) is unreadable: "
                    f"data is {type(data).__name__}, not bytes"
                )
        try:
            snapshot = merge_all([*parts, *(data for _, data in rows)])
        except Exception as exc:  # pycrdt raises plain exceptions on a malformed update
            raise StoreReadError(
                f"log of {name!r} (org {org!r}) cannot be merged into its snapshot: {exc}"
            ) from exc
    conn.execute(
        "INSERT INTO snapshots (org, name, data, upto_update_id, at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (org, name) DO UPDATE SET "
        "data = excluded.data, upto_update_id = excluded.upto_update_id, at = excluded.at",
        (org, name, snapshot, upto, now),
    )
    conn.execute("DELETE FROM updates WHERE org = ? AND name = ?", key)


#: Updates merged in one call: yrs merges n updates in time growing faster than n (10,000
#: small ones: half a second), so a long log is merged in rounds of this many.
MERGE_CHUNK = 100


def merge_all(updates: list[bytes]) -> bytes:
    """One Yjs update holding everything ``updates`` hold (:func:`pycrdt.merge_updates`)."""
    while len(updates) > MERGE_CHUNK:
        updates = [
            merge_updates(*updates[i : i + MERGE_CHUNK])
            for i in range(0, len(updates), MERGE_CHUNK)
        ]
    return merge_updates(*updates)


def delete_doc(conn: sqlite3.Connection, ids: UpdateIds, org: str, name: str) -> bool:
    """Delete the doc, its snapshot and log, leaving a tombstone if it existed."""
    key = (org, name)
    conn.execute("DELETE FROM updates WHERE org = ? AND name = ?", key)
    conn.execute("DELETE FROM snapshots WHERE org = ? AND name = ?", key)
    cur = conn.execute("DELETE FROM documents WHERE org = ? AND name = ?", key)
    ids.forget(org, name)
    existed = cur.rowcount > 0
    if existed:
        conn.execute(
            "INSERT INTO deleted_docs (org, name, at) VALUES (?, ?, ?) "
            "ON CONFLICT (org, name) DO UPDATE SET at = excluded.at",
            (org, name, values.now_ms()),
        )
    return existed


def max_update_id(conn: sqlite3.Connection) -> int:
    """The newest update id the file has ever given (for the start-up log line)."""
    row = conn.execute(
        "SELECT max("
        " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'updates'), 0),"
        " coalesce((SELECT max(id) FROM updates), 0))"
    ).fetchone()
    return int(row[0])
