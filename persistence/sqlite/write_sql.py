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
"""

from __future__ import annotations

import asyncio
import enum
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from persistence import values
from persistence.store import Frame, FrameBatch, FrameDraft

OPS = frozenset({"i", "u", "d"})


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
    committed: list[Frame] | None = None  # those frames, with their sids, once written
    size: int = 0  # bytes counted against max_queued_bytes while it is queued


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    draft: FrameDraft
    p: str
    ctx: str
    record: str | None


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    org: str
    frames: tuple[PreparedFrame, ...]
    mutation: tuple[str, str] | None  # (client_tx_id, result JSON)


def prepare(org: str, batch: FrameBatch) -> PreparedBatch:
    """Check and serialise ``batch`` before it is queued.

    Raises:
        TypeError, ValueError: a value the store cannot hold.
    """
    values.check_text(org, "org")
    frames = []
    for draft in batch.frames:
        for value, what in ((draft.t, "t"), (draft.id, "id"), (draft.op, "op")):
            values.check_text(value, what)
        if draft.op not in OPS:
            raise ValueError(f"op must be one of i, u, d; got {draft.op!r}")
        values.check_opt_text(draft.who, "who")
        values.check_int(draft.at, "at")
        if draft.update_id is not None:
            values.check_int(draft.update_id, "update_id")
        if (draft.record is None) != (draft.op == "d"):
            raise ValueError("a frame leaves a record projection unless op is 'd'")
        record = None if draft.record is None else values.dumps(draft.record, "record")
        frames.append(
            PreparedFrame(draft, values.dumps(draft.p, "p"), values.dumps(draft.ctx, "ctx"), record)
        )
    mutation = None
    if batch.mutation is not None:
        client_tx_id, result = batch.mutation
        values.check_text(client_tx_id, "client_tx_id")
        mutation = (client_tx_id, values.dumps(result, "result"))
    return PreparedBatch(org, tuple(frames), mutation)


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


def write_frames(
    conn: sqlite3.Connection,
    batch: PreparedBatch,
    sids: SidSequence,
    *,
    update_id: int | None,
) -> list[Frame]:
    """Write ``batch`` inside the caller's transaction; return the frames with their sids.

    Args:
        sids: The transaction's sid counters (the caller saves them before committing).
        update_id: The update the batch rides on: the covered update id of records
            whose draft leaves it ``None``.
    """
    org = batch.org
    committed = []
    sid = sids.take(org, len(batch.frames)) - 1 if batch.frames else 0
    for prepared in batch.frames:
        d = prepared.draft
        sid += 1
        conn.execute(
            "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (org, sid, d.t, d.id, d.op, prepared.p, d.who, d.at, prepared.ctx),
        )
        if prepared.record is None:
            conn.execute("DELETE FROM records WHERE org = ? AND t = ? AND id = ?", (org, d.t, d.id))
        else:
            covered = d.update_id if d.update_id is not None else (update_id or 0)
            conn.execute(
                "INSERT INTO records (org, t, id, fields, sid, update_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org, t, id) DO UPDATE SET "
                "fields = excluded.fields, sid = excluded.sid, "
                "update_id = max(records.update_id, excluded.update_id), "
                "updated_at = excluded.updated_at",
                (org, d.t, d.id, prepared.record, sid, covered, d.at),
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


def batch_size(batch: PreparedBatch | None) -> int:
    """Bytes of ``batch``'s serialised values (counted against the queue bound)."""
    if batch is None:
        return 0
    size = sum(len(f.p) + len(f.ctx) + len(f.record or "") for f in batch.frames)
    return size + (len(batch.mutation[1]) if batch.mutation is not None else 0)


# -- the ops of one writer transaction ---------------------------------------------------

_UPSERT_DOC = (
    "INSERT INTO documents (org, name, created_at, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (org, name) DO UPDATE SET updated_at = max(updated_at, excluded.updated_at)"
)


def apply(conn: sqlite3.Connection, ops: list[Op]) -> None:
    """Execute ``ops`` in order, setting each one's result."""
    sids = SidSequence(conn)
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.kind is Kind.APPEND:
            # Consecutive appends (the common case) go in with two executemany calls.
            j = i + 1
            while j < len(ops) and ops[j].kind is Kind.APPEND:
                j += 1
            _apply_appends(conn, ops[i:j])
            for op in ops[i:j]:
                if op.batch is not None:
                    op.result = _apply_batch(conn, op, sids, update_id=op.args[0])
                else:
                    op.result = []
            i = j
            continue
        if op.kind is Kind.COMPACT:
            org, name, data, upto, now = op.args
            conn.execute(
                "INSERT INTO documents (org, name, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (org, name) DO NOTHING",
                (org, name, now, now),
            )
            conn.execute(
                "INSERT INTO snapshots (org, name, data, upto_update_id, at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (org, name) DO UPDATE SET "
                "data = excluded.data, upto_update_id = excluded.upto_update_id, at = excluded.at",
                (org, name, data, upto, now),
            )
            conn.execute(
                "DELETE FROM updates WHERE org = ? AND name = ? AND id <= ?", (org, name, upto)
            )
        elif op.kind is Kind.DELETE:
            op.result = delete_doc(conn, *op.args)
        elif op.kind is Kind.FRAMES:
            org, delete = op.args
            if delete is not None:
                delete_doc(conn, org, delete)
            op.result = _apply_batch(conn, op, sids, update_id=None)
        elif op.kind is Kind.FRAME:
            org, t, id_, kind, p, who, at, ctx = op.args
            sid = sids.take(org)
            conn.execute(
                "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (org, sid, *op.args[1:]),
            )
            op.result = sid
            op.committed = [Frame(sid, org, t, id_, kind, json.loads(p), who, at, json.loads(ctx))]
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


def _apply_appends(conn: sqlite3.Connection, ops: list[Op]) -> None:
    docs: dict[tuple[str, str], list[int]] = {}
    for op in ops:
        _, org, name, _, _, at = op.args
        span = docs.get((org, name))
        if span is None:
            docs[(org, name)] = [at, at]
        else:
            span[1] = max(span[1], at)
    # The documents row first: the update rows reference it.
    conn.executemany(_UPSERT_DOC, [(o, n, first, last) for (o, n), (first, last) in docs.items()])
    conn.executemany(
        "INSERT INTO updates (id, org, name, data, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
        [op.args for op in ops],
    )


def delete_doc(conn: sqlite3.Connection, org: str, name: str) -> bool:
    key = (org, name)
    conn.execute("DELETE FROM updates WHERE org = ? AND name = ?", key)
    conn.execute("DELETE FROM snapshots WHERE org = ? AND name = ?", key)
    cur = conn.execute("DELETE FROM documents WHERE org = ? AND name = ?", key)
    return cur.rowcount > 0


def _apply_batch(
    conn: sqlite3.Connection, op: Op, sids: SidSequence, *, update_id: int | None
) -> list[int]:
    assert op.batch is not None
    op.committed = write_frames(conn, op.batch, sids, update_id=update_id)
    return [frame.sid for frame in op.committed]


def max_update_id(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT max("
        " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'updates'), 0),"
        " coalesce((SELECT max(id) FROM updates), 0),"
        " coalesce((SELECT max(upto_update_id) FROM snapshots), 0))"
    ).fetchone()
    return int(row[0])
