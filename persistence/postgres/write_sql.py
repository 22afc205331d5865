"""What the PostgreSQL writer runs inside one transaction: a batch of queued ops.

Cross-node ordering comes from row locks, taken at the start of the transaction in
one global order so that two nodes' batches can wait on each other but never
deadlock:

1. the ``documents`` row of every doc the batch writes (sorted by ``(org, name)``;
   created as a placeholder if new). Held to the commit, so the update ids drawn
   next (``update_ids``) grow per doc in commit order, and the row's
   ``last_update_id`` is the ``prev_update_id`` of the doc's next append;
2. every idempotency key of the batch, inserted (sorted) with ``ON CONFLICT DO
   NOTHING``: a key another node inserted and has not committed makes us wait for
   its outcome; a key already stored turns the op carrying it into a replay;
3. the ``frame_seq`` row of every org the batch logs frames for (sorted): the org's
   sids are then assigned in memory and written back before the commit, so another
   node's next frames wait for this commit and continue after its last sid
   (gap-free, in commit order).

Then the ops run in queue order. Records are written only by transactions holding
their org's ``frame_seq`` row, which therefore also orders the settling of drafts
against the row (:func:`persistence.framing.settle`: only what is new is logged, so a
change framed by several nodes is logged once, by whichever commits first).

Compaction takes the doc's row lock like an append, so it sees every committed log
row of the doc and no other writer can add or drop one until it commits; it merges
the snapshot, every log row it drops and the given state (so what another node
logged and the state lacks is never lost), and deletes exactly the rows it merged.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from psycopg import AsyncConnection
from pycrdt import merge_updates

from persistence import framing, outbox, values
from persistence.framing import fold, settle
from persistence.prepared import PreparedBatch
from persistence.prepared import prepare as prepare_checked
from persistence.store import (
    Committed,
    Frame,
    FrameBatch,
    MutationReplayed,
    StoreWriteError,
)

__all__ = ["BARRIERS", "Kind", "Op", "PreparedBatch", "apply", "prepare"]

# documents.state
PLACEHOLDER, STORED, DELETED = 0, 1, 2


class Kind(enum.Enum):
    APPEND = "append"
    FRAMES = "frames"  # log_frames: a FrameBatch (and a doc deletion) on its own
    COMPACT = "compact"
    DELETE = "delete"
    FRAME = "frame"  # append_frame
    TRIM = "trim"
    MUTATION = "mutation"  # put_mutation
    PROBE = "probe"  # one small write
    FLUSH = "flush"  # barrier: commit what came before, report failures
    STOP = "stop"  # barrier: commit what came before, then stop


BARRIERS = frozenset({Kind.FLUSH, Kind.STOP})


@dataclass(slots=True, eq=False)
class Op:
    kind: Kind
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    batch: PreparedBatch | None = None
    size: int = 0  # bytes counted against the writer's bound while queued
    more: bool = False  # not the last op of an atomic group: commit with the next one
    # Set by apply() (reset at each attempt):
    result: Any = None
    error: BaseException | None = None
    replayed: bool = False


def check_text(value: object, what: str) -> None:
    """:func:`persistence.values.check_text`, and no NUL: PostgreSQL ``text`` cannot
    hold one, and a value it refuses would fail the whole batch it lands in."""
    values.check_text(value, what)
    if "\x00" in value:  # type: ignore[operator]
        raise values.UnstorableValue(f"{what} contains a NUL character")


def check_opt_text(value: object, what: str) -> None:
    if value is not None:
        check_text(value, what)


def prepare(org: str, batch: FrameBatch) -> PreparedBatch:
    """:func:`persistence.prepared.prepare` with PostgreSQL's :func:`check_text`."""
    return prepare_checked(org, batch, check_text=check_text)


# -- the transaction ---------------------------------------------------------------------


@dataclass(slots=True)
class _Doc:
    state: int
    last: int  # newest update id
    changed: bool = False
    updated_at: int = 0  # newest ``at`` of this transaction's appends
    created: bool = False  # became STORED here (from placeholder or deleted)
    first_at: int | None = None  # ``at`` of its first append since ``created``


@dataclass(slots=True)
class _Txn:
    conn: AsyncConnection
    now: int
    docs: dict[tuple[str, str], _Doc]
    sids: dict[str, int]  # org -> last sid (locked)
    sids_changed: set[str] = field(default_factory=set)
    ids: list[int] = field(default_factory=list)  # drawn update ids, ascending
    # (org, t, id) -> (fields, covered update id) of the stored record (None: no
    # record), as this transaction leaves it.
    records: dict[tuple[str, str, str], tuple[dict[str, Any], int] | None] = field(
        default_factory=dict
    )
    keys: dict[tuple[str, str], Op] = field(default_factory=dict)  # key -> op storing it
    #: (org, name) -> the newest update of the doc this node appended, before this
    #: transaction (read only) and in it (``own``, merged by the writer on commit).
    own_before: dict[tuple[str, str], int] = field(default_factory=dict)
    own: dict[tuple[str, str], int | None] = field(default_factory=dict)
    outbox: bool = False  # frames also get webhook outbox rows


async def apply(
    conn: AsyncConnection,
    ops: list[Op],
    own_heads: Mapping[tuple[str, str], int],
    *,
    outbox: bool = False,
) -> dict[tuple[str, str], int | None]:
    """Run ``ops`` in order inside the caller's transaction; set each one's outcome.

    Args:
        own_heads: ``(org, name)`` -> the newest update of the doc this node appended
            (what a draft of this node without ``update_id`` covers, see
            :func:`_doc_heads`).
        outbox: Give every frame logged its webhook outbox row in this transaction
            (:mod:`persistence.outbox`).

    Returns:
        What ``own_heads`` becomes if the transaction commits (``None``: forget the doc).
    """
    for op in ops:
        op.result = None
        op.error = None
        op.replayed = False
    now = values.now_ms()
    txn = _Txn(conn, now, await _lock_docs(conn, ops, now), {})
    txn.own_before = own_heads  # type: ignore[assignment]
    txn.outbox = outbox
    replayed_keys = await _store_keys(txn, ops)
    txn.sids = await _lock_sequences(conn, ops)
    appends = sum(op.kind is Kind.APPEND for op in ops)
    if appends:
        cur = await conn.execute(
            "SELECT nextval('update_ids') FROM generate_series(1, %s)", [appends]
        )
        txn.ids = sorted(row[0] for row in await cur.fetchall())
    for op in ops:
        await _apply_op(txn, op)
    await _write_back(txn)
    if replayed_keys:
        await _settle_replays(txn, ops, replayed_keys)
    return txn.own


def _doc_keys(op: Op) -> list[tuple[str, str]]:
    if op.kind in (Kind.APPEND, Kind.COMPACT, Kind.DELETE):
        return [(op.args[0], op.args[1])]
    if op.kind is Kind.FRAMES and op.args[1] is not None:
        return [(op.args[0], op.args[1])]
    return []


async def _lock_docs(conn: AsyncConnection, ops: list[Op], now: int) -> dict[tuple[str, str], _Doc]:
    keys = sorted({key for op in ops for key in _doc_keys(op)})
    if not keys:
        return {}
    # One statement, rows inserted (or locked, through the no-op DO UPDATE) in the
    # order of ``keys``: the global lock order of documents rows.
    cur = await conn.execute(
        "INSERT INTO documents (org, name, state, created_at, updated_at, last_update_id)"
        " SELECT k.org, k.name, 0, %s, %s, 0"
        " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS k(org, name, n)"
        " ORDER BY k.n"
        " ON CONFLICT (org, name) DO UPDATE SET state = documents.state"
        " RETURNING org, name, state, last_update_id",
        [now, now, [k[0] for k in keys], [k[1] for k in keys]],
    )
    return {(org, name): _Doc(state, last) for org, name, state, last in await cur.fetchall()}


def _key_of(op: Op) -> tuple[str, str, str] | None:
    """``(org, client_tx_id, result JSON)`` an op stores, if any."""
    if op.kind is Kind.MUTATION:
        org, client_tx_id, result, _at = op.args
        return org, client_tx_id, result
    if op.batch is not None and op.batch.mutation is not None:
        return op.batch.org, *op.batch.mutation
    return None


async def _store_keys(txn: _Txn, ops: list[Op]) -> set[tuple[str, str]]:
    """Insert every idempotency key of the batch (sorted); return the keys that were
    there already (their ops are replays). The first op of the batch naming a key
    stores it; a later one replays it."""
    firsts: dict[tuple[str, str], str] = {}
    later: set[tuple[str, str]] = set()
    for op in ops:
        key = _key_of(op)
        if key is None:
            continue
        org, client_tx_id, result = key
        if (org, client_tx_id) in txn.keys:
            later.add((org, client_tx_id))
            if op.kind is not Kind.MUTATION:  # put_mutation: first wins, silently
                op.replayed = True
            continue
        txn.keys[(org, client_tx_id)] = op
        firsts[(org, client_tx_id)] = result
    if not firsts:
        return later
    keys = sorted(firsts)
    cur = await txn.conn.execute(
        "INSERT INTO mutations (org, client_tx_id, result, at, sid)"
        " SELECT k.org, k.tx, k.result, %s, NULL"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS k(org, tx, result, n)"
        " ORDER BY k.n"
        " ON CONFLICT (org, client_tx_id) DO NOTHING RETURNING org, client_tx_id",
        [txn.now, [k[0] for k in keys], [k[1] for k in keys], [firsts[k] for k in keys]],
    )
    inserted = {(org, tx) for org, tx in await cur.fetchall()}
    replayed = set(later)
    for key in keys:
        if key not in inserted:
            op = txn.keys.pop(key)
            if op.kind is not Kind.MUTATION:
                op.replayed = True
                replayed.add(key)
    return replayed


def _frame_orgs(op: Op) -> list[str]:
    if op.kind in (Kind.FRAME, Kind.TRIM):
        return [op.args[0]]
    if op.batch is not None and op.batch.frames and not op.replayed:
        return [op.batch.org]
    return []


async def _lock_sequences(conn: AsyncConnection, ops: list[Op]) -> dict[str, int]:
    orgs = sorted({org for op in ops for org in _frame_orgs(op)})
    if not orgs:
        return {}
    cur = await conn.execute(
        "INSERT INTO frame_seq (org, last_sid)"
        " SELECT k.org, 0 FROM unnest(%s::text[]) WITH ORDINALITY AS k(org, n) ORDER BY k.n"
        " ON CONFLICT (org) DO UPDATE SET last_sid = frame_seq.last_sid"
        " RETURNING org, last_sid",
        [orgs],
    )
    return {org: int(last) for org, last in await cur.fetchall()}


async def _apply_op(txn: _Txn, op: Op) -> None:
    conn = txn.conn
    kind = op.kind
    if kind is Kind.APPEND:
        org, name, data, actor, at = op.args
        doc = txn.docs[(org, name)]
        prev = doc.last if doc.state == STORED else 0
        update_id = txn.ids.pop(0)
        _mark_stored(doc, update_id, at)
        txn.own[(org, name)] = update_id
        await conn.execute(
            "INSERT INTO updates (id, org, name, data, actor, at) VALUES (%s, %s, %s, %s, %s, %s)",
            [update_id, org, name, data, actor, at],
        )
        frames: list[Frame] = []
        if op.batch is not None and not op.replayed:
            frames = await _write_frames(txn, op.batch, update_id=update_id)
        op.result = Committed(update_id=update_id, prev_update_id=prev, frames=frames)
    elif kind is Kind.FRAMES:
        org, delete = op.args
        if op.replayed:
            return  # settled with MutationReplayed once the stored result is read
        if delete is not None:
            await _delete_doc(txn, org, delete)
        assert op.batch is not None
        op.result = await _write_frames(txn, op.batch, update_id=None)
    elif kind is Kind.COMPACT:
        await _compact(txn, op)
    elif kind is Kind.DELETE:
        op.result = await _delete_doc(txn, *op.args)
    elif kind is Kind.FRAME:
        org, t, id_, frame_op, p_text, who, at, ctx_text = op.args
        sid = _next_sid(txn, org)
        await conn.execute(
            "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [org, sid, t, id_, frame_op, p_text, who, at, ctx_text],
        )
        if txn.outbox:
            await _outbox_row(txn, org, sid, t, id_, frame_op, p_text, who, at, ctx_text)
        op.result = sid
    elif kind is Kind.TRIM:
        org, keep = op.args
        cur = await conn.execute(
            "WITH gone AS (DELETE FROM frames WHERE org = %s AND sid <="
            " (SELECT sid FROM frames WHERE org = %s ORDER BY sid DESC LIMIT 1 OFFSET %s)"
            " RETURNING 1) SELECT count(*) FROM gone",
            [org, org, keep],
        )
        row = await cur.fetchone()
        op.result = int(row[0]) if row is not None else 0
    elif kind is Kind.MUTATION:
        pass  # stored (or found stored: first wins) with the batch's keys
    elif kind is Kind.PROBE:
        await conn.execute("UPDATE schema_version SET version = version")
    else:  # pragma: no cover - barriers never reach here
        raise AssertionError(f"unexpected op {kind} in a write batch")


def _mark_stored(doc: _Doc, update_id: int | None, at: int | None) -> None:
    if doc.state != STORED:
        doc.state = STORED
        doc.last = 0
        doc.created = True
        doc.first_at = at
    if update_id is not None:
        doc.last = update_id
    if at is not None:
        doc.updated_at = max(doc.updated_at, at)
    doc.changed = True


def _next_sid(txn: _Txn, org: str) -> int:
    sid = txn.sids[org] + 1
    txn.sids[org] = sid
    txn.sids_changed.add(org)
    return sid


async def _delete_doc(txn: _Txn, org: str, name: str) -> bool:
    doc = txn.docs[(org, name)]
    existed = doc.state == STORED
    txn.own[(org, name)] = None
    await txn.conn.execute("DELETE FROM updates WHERE org = %s AND name = %s", [org, name])
    await txn.conn.execute("DELETE FROM snapshots WHERE org = %s AND name = %s", [org, name])
    # The row stays (state DELETED), so its versions do not cascade: they go here.
    await txn.conn.execute("DELETE FROM versions WHERE org = %s AND name = %s", [org, name])
    if existed:
        doc.state = DELETED
        doc.last = 0
        doc.created = False
        doc.changed = True
    return existed


async def _compact(txn: _Txn, op: Op) -> None:
    org, name, state, now = op.args
    doc = txn.docs[(org, name)]
    if doc.state == DELETED:
        return  # deleted docs stay deleted
    conn = txn.conn
    parts: list[bytes] = []
    upto = 0
    ids: list[int] = []
    if doc.state == STORED:
        cur = await conn.execute(
            "SELECT data, upto_update_id FROM snapshots WHERE org = %s AND name = %s",
            [org, name],
        )
        snap = await cur.fetchone()
        if snap is not None:
            parts.append(bytes(snap[0]))
            upto = int(snap[1])
        cur = await conn.execute(
            "SELECT id, data FROM updates WHERE org = %s AND name = %s ORDER BY id", [org, name]
        )
        for update_id, data in await cur.fetchall():
            ids.append(int(update_id))
            parts.append(bytes(data))
    parts.append(state)
    try:
        merged = await anyio.to_thread.run_sync(_merge, parts)
    except ValueError as exc:
        op.error = StoreWriteError(f"cannot compact {name!r} (org {org!r}): {exc}")
        return
    if ids:
        upto = max(upto, ids[-1])
    if doc.state != STORED:  # never stored: compaction creates it
        _mark_stored(doc, None, None)
    await conn.execute(
        "INSERT INTO snapshots (org, name, data, upto_update_id, at) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (org, name) DO UPDATE SET data = excluded.data,"
        " upto_update_id = excluded.upto_update_id, at = excluded.at",
        [org, name, merged, upto, now],
    )
    if ids:
        await conn.execute(
            "DELETE FROM updates WHERE org = %s AND name = %s AND id = ANY(%s)", [org, name, ids]
        )


def _merge(parts: list[bytes]) -> bytes:
    # Even one part goes through: a malformed state fails here, not in a later load.
    return merge_updates(*parts)


async def _write_frames(txn: _Txn, batch: PreparedBatch, *, update_id: int | None) -> list[Frame]:
    """Log what is new in the drafts of ``batch`` against the stored record rows
    (:func:`persistence.framing.settle`), fold them into the rows, and store its key's sid."""
    org = batch.org
    conn = txn.conn
    await _load_records(txn, batch)
    covered_by_doc = await _doc_heads(txn, batch) if update_id is None else {}
    committed: list[Frame] = []
    for prepared in batch.frames:
        rkey = (org, prepared.draft.t, prepared.draft.id)
        row = txn.records.get(rkey)
        stored_fields, stored_covered = row if row is not None else (None, None)
        d = settle(prepared.draft, stored_fields, stored_covered)
        if d is None:
            continue  # nothing new: another node (or an earlier draft) framed it
        sid = _next_sid(txn, org)
        p_text = prepared.p if d is prepared.draft else values.dumps(d.p, "p")
        await conn.execute(
            "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [org, sid, d.t, d.id, d.op, p_text, d.who, d.at, prepared.ctx],
        )
        if txn.outbox:
            await _outbox_row(txn, org, sid, d.t, d.id, d.op, p_text, d.who, d.at, prepared.ctx)
        fields = fold(stored_fields, d)
        if fields is None:
            await conn.execute(
                "DELETE FROM records WHERE org = %s AND t = %s AND id = %s", [org, d.t, d.id]
            )
            txn.records[rkey] = None
        else:
            covered = framing.covered(
                d, update_id, lambda name: covered_by_doc.get(name, 0), stored_covered
            )
            await conn.execute(
                "INSERT INTO records (org, t, id, fields, sid, update_id, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (org, t, id) DO UPDATE SET"
                " fields = excluded.fields, sid = excluded.sid,"
                " update_id = greatest(records.update_id, excluded.update_id),"
                " updated_at = excluded.updated_at",
                [org, d.t, d.id, values.dumps(fields, "record"), sid, covered, d.at],
            )
            txn.records[rkey] = (fields, covered)
        committed.append(Frame(sid, org, d.t, d.id, d.op, d.p, d.who, d.at, d.ctx))
    if batch.mutation is not None and committed:
        await conn.execute(
            "UPDATE mutations SET sid = %s WHERE org = %s AND client_tx_id = %s",
            [committed[-1].sid, org, batch.mutation[0]],
        )
    return committed


async def _outbox_row(
    txn: _Txn,
    org: str,
    sid: int,
    t: str,
    id_: str,
    op: str,
    p_text: str,
    who: str | None,
    at: int,
    ctx_text: str,
) -> None:
    await txn.conn.execute(
        "INSERT INTO webhook_outbox (org, sid, t, rid, frame, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        [org, sid, t, id_, outbox.frame_json(id_, op, p_text, who, at, ctx_text), txn.now],
    )


async def _load_records(txn: _Txn, batch: PreparedBatch) -> None:
    """Read (once per transaction) the stored rows of the batch's records: their
    fields and covered update id.

    Under the org's ``frame_seq`` lock: nobody else writes these rows until we commit.
    """
    org = batch.org
    missing = sorted({(d.draft.t, d.draft.id) for d in batch.frames} - _known(txn, org))
    if not missing:
        return
    cur = await txn.conn.execute(
        "SELECT r.t, r.id, r.fields, r.update_id FROM records r"
        " JOIN unnest(%s::text[], %s::text[]) AS k(t, id) ON r.t = k.t AND r.id = k.id"
        " WHERE r.org = %s",
        [[k[0] for k in missing], [k[1] for k in missing], org],
    )
    found = {(t, id_): (values.loads(fields), int(u)) for t, id_, fields, u in await cur.fetchall()}
    for t, id_ in missing:
        txn.records[(org, t, id_)] = found.get((t, id_))


def _known(txn: _Txn, org: str) -> set[tuple[str, str]]:
    return {(t, id_) for (o, t, id_) in txn.records if o == org}


async def _doc_heads(txn: _Txn, batch: PreparedBatch) -> dict[str, int]:
    """What a draft of ``batch`` without ``update_id`` covers in :meth:`log_frames`:
    the newest update of its record doc that *this node* appended (its drafts are
    queued after its own appends, and it may not hold what other nodes appended
    meanwhile: claiming their updates would make a later, newer view of theirs look
    stale, see :func:`persistence.framing.settle`); for a doc this node never
    appended to, the doc's newest update."""
    org = batch.org
    heads: dict[str, int] = {}
    unknown: list[str] = []
    for prepared in batch.frames:
        name = f"{prepared.draft.t}/{prepared.draft.id}"
        if prepared.draft.update_id is not None or name in heads:
            continue
        key = (org, name)
        own = txn.own[key] if key in txn.own else txn.own_before.get(key)
        doc = txn.docs.get(key)
        if own is not None and (doc is None or doc.state == STORED):
            heads[name] = own
        elif doc is not None:
            heads[name] = doc.last if doc.state == STORED else 0
        else:
            heads[name] = 0
            unknown.append(name)
    if unknown:
        cur = await txn.conn.execute(
            "SELECT name, last_update_id FROM documents"
            " WHERE org = %s AND name = ANY(%s::text[]) AND state = 1",
            [org, unknown],
        )
        for name, last in await cur.fetchall():
            heads[name] = int(last)
    return heads


async def _write_back(txn: _Txn) -> None:
    changed = [(key, doc) for key, doc in txn.docs.items() if doc.changed]
    if changed:
        # A doc stored anew (first append, or compaction of a doc never stored) starts
        # its timestamps over, as a new SQLite row does; otherwise updated_at only grows.
        await txn.conn.execute(
            "UPDATE documents d SET state = v.state, last_update_id = v.last,"
            " updated_at = CASE WHEN v.created THEN v.updated_at"
            "   ELSE greatest(d.updated_at, v.updated_at) END,"
            " created_at = CASE WHEN v.created THEN v.created_at ELSE d.created_at END"
            " FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::bigint[], %s::bigint[],"
            "   %s::bigint[], %s::boolean[])"
            "   AS v(org, name, state, last, updated_at, created_at, created)"
            " WHERE d.org = v.org AND d.name = v.name",
            [
                [k[0] for k, _ in changed],
                [k[1] for k, _ in changed],
                [d.state for _, d in changed],
                [d.last for _, d in changed],
                [d.updated_at or txn.now if d.created else d.updated_at for _, d in changed],
                [d.first_at if d.first_at is not None else txn.now for _, d in changed],
                [d.created for _, d in changed],
            ],
        )
    if txn.sids_changed:
        orgs = sorted(txn.sids_changed)
        await txn.conn.execute(
            "UPDATE frame_seq s SET last_sid = v.last"
            " FROM unnest(%s::text[], %s::bigint[]) AS v(org, last) WHERE s.org = v.org",
            [orgs, [txn.sids[o] for o in orgs]],
        )


async def _settle_replays(txn: _Txn, ops: list[Op], keys: set[tuple[str, str]]) -> None:
    ordered = sorted(keys)
    cur = await txn.conn.execute(
        "SELECT m.org, m.client_tx_id, m.result, m.sid FROM mutations m"
        " JOIN unnest(%s::text[], %s::text[]) AS k(org, tx)"
        " ON m.org = k.org AND m.client_tx_id = k.tx",
        [[k[0] for k in ordered], [k[1] for k in ordered]],
    )
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for org, client_tx_id, result, sid in await cur.fetchall():
        value = values.loads(result)
        if sid is not None and isinstance(value, dict):
            value["sid"] = int(sid)
        stored[(org, client_tx_id)] = value
    for op in ops:
        if not op.replayed or op.batch is None or op.batch.mutation is None:
            continue
        key = (op.batch.org, op.batch.mutation[0])
        result = stored.get(key, {})
        if op.kind is Kind.APPEND:
            committed: Committed = op.result
            op.result = Committed(
                committed.update_id, committed.prev_update_id, [], replayed=dict(result)
            )
        else:
            op.error = MutationReplayed(key[1], dict(result))
