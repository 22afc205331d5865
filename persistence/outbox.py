"""The webhook outbox: frames waiting to be announced, and their deliveries.

When a store is opened with ``outbox=True`` every frame it logs also gets a row in
``webhook_outbox``, in the transaction that logs the frame: a frame is never
announced before it is durable and never forgotten after a crash. The row carries the
frame itself (org, sid, t and the rest as JSON), so delivery never depends on the
frame log's retention.

An **endpoint** (a webhook URL and its type filter, named by a short stable hash)
has a cursor per org: the newest sid delivered (or parked) to it. A **delivery** is a
batch of one org's frames claimed for one endpoint, with its sid range fixed when it
is claimed: it keeps that range (and so its ``webhook-id``) across retries and
restarts. While an org has a pending delivery above the cursor, no later batch of
that org is claimed for the endpoint: per endpoint and org, deliveries go in sid
order. A claim holds a **lease** (owner, expiry): a node that dies mid-delivery leaves
a lease that expires, and then any node takes the batch over and sends it again.

Deliveries are **throttled per record**: ``webhook_throttle`` holds, per endpoint, org
and record, when a batch carrying that record was last claimed. A record is *due*
when it has frames past the cursor and was not sent within the throttle window. A
batch is claimed once one of its records is due (or it is full): a record's first
change goes out at once, and while it keeps changing its frames wait for its window
and go together, so a typing user gives at most one POST per window, and a change to
another record does not wait for that window. A batch is still every frame past the
cursor (up to the batch size): frames of records that are not due ride along, so
order and the sid range stay whole.

The SQL is written once, sans I/O: each operation is a generator that yields
:class:`Stmt` and is sent back a :class:`Rows`; :func:`run_sync` drives it on a
``sqlite3`` connection, :func:`run_async` on a psycopg one. PostgreSQL adds row locks
(``FOR UPDATE SKIP LOCKED``) so that two nodes never claim the same work.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from persistence import values
from persistence.store import Frame

__all__ = [
    "Delivery",
    "DeliveryInfo",
    "EndpointSpec",
    "OutboxStatus",
    "frame_json",
]

PENDING, PARKED = "pending", "parked"
#: Outbox rows read per claim beyond the batch size, to find the batch's frames among
#: frames the endpoint's type filter skips.
SCAN_FACTOR = 4
#: Records per statement that marks a batch's records sent (5 parameters each, within
#: SQLite's limit on host parameters).
THROTTLE_ROWS = 1000


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What the store needs of a webhook endpoint.

    Attributes:
        id: Its stable id (a hash of URL and type filter).
        types: Record types it wants (empty: every type).
    """

    id: str
    types: frozenset[str] = frozenset()

    def wants(self, t: str) -> bool:
        return not self.types or t in self.types


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed batch: send it, then report with :meth:`Store.finish_delivery`.

    Attributes:
        id: The delivery row's id (the admin API's, not the ``webhook-id``).
        endpoint: The endpoint id.
        org: The tenant.
        first_sid: The batch's first frame.
        last_sid: The sid the cursor moves to once it is delivered (its last frame,
            or past frames the filter skips).
        attempts: Failed attempts before this one.
        first_attempt_at: Epoch ms of its first attempt (the retry period starts there).
        frames: The frames, in sid order.
    """

    id: int
    endpoint: str
    org: str
    first_sid: int
    last_sid: int
    attempts: int
    first_attempt_at: int
    frames: list[Frame] = field(default_factory=list)

    @property
    def webhook_id(self) -> str:
        """The idempotency key the receiver dedupes on."""
        return f"{self.endpoint}:{self.org}:{self.first_sid}-{self.last_sid}"


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """A delivery row as the admin API shows it."""

    id: int
    endpoint: str
    org: str
    first_sid: int
    last_sid: int
    status: str
    attempts: int
    first_attempt_at: int | None
    next_attempt_at: int
    lease_owner: str | None
    lease_expires: int
    last_error: str | None
    last_status: int | None
    frames: int = 0

    @property
    def webhook_id(self) -> str:
        return f"{self.endpoint}:{self.org}:{self.first_sid}-{self.last_sid}"


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What :meth:`Store.webhook_status` returns.

    Attributes:
        cursors: ``(endpoint, org) -> (cursor sid, outbox frames past it)``, for every
            endpoint asked about and every org with outbox rows or a cursor.
        deliveries: Pending and parked deliveries of those endpoints, by id.
    """

    cursors: dict[tuple[str, str], tuple[int, int]]
    deliveries: list[DeliveryInfo]


def frame_json(id: str, op: str, p_text: str, who: str | None, at: int, ctx_text: str) -> str:
    """The outbox's copy of a frame (what is not in its own columns), built from the
    JSON texts the frame log stores (nothing is serialised twice)."""
    return (
        f'{{"id":{json.dumps(id)},"op":{json.dumps(op)},"p":{p_text},'
        f'"who":{json.dumps(who)},"at":{int(at)},"ctx":{ctx_text}}}'
    )


def frame_of(org: str, sid: int, t: str, text: str) -> Frame:
    """The :class:`Frame` of an outbox row."""
    d = values.loads(text)
    return Frame(int(sid), org, t, d["id"], d["op"], d["p"], d["who"], int(d["at"]), d["ctx"])


# -- the SQL, sans I/O ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stmt:
    sql: str  # ``?`` placeholders (PostgreSQL's ``%s`` substituted by run_async)
    params: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Rows:
    rows: list[tuple[Any, ...]]
    rowcount: int


Op = Generator[Stmt, Rows, Any]


def claim(
    endpoint: EndpointSpec,
    *,
    owner: str,
    now: int,
    lease_ms: int,
    max_batch: int,
    throttle_ms: int,
    pg: bool,
) -> Op:
    """Claim the next batch for ``endpoint`` (one transaction): a pending delivery due
    and unleased (a retry, a replay, or one whose sender died), else a new batch of
    the first org with frames past its cursor of which one is of a record not sent
    within ``throttle_ms`` (or that has ``max_batch`` of them). Returns a
    :class:`Delivery` or ``None``."""
    lock = " FOR UPDATE SKIP LOCKED" if pg else ""
    found = yield Stmt(
        "SELECT id, org, first_sid, last_sid, attempts, first_attempt_at"
        " FROM webhook_deliveries WHERE endpoint = ? AND status = 'pending'"
        " AND next_attempt_at <= ? AND lease_expires <= ?"
        " ORDER BY next_attempt_at, id LIMIT 1" + lock,
        (endpoint.id, now, now),
    )
    if found.rows:
        did, org, first, last, attempts, first_at = found.rows[0]
        first_at = now if first_at is None else int(first_at)
        yield Stmt(
            "UPDATE webhook_deliveries SET lease_owner = ?, lease_expires = ?,"
            " first_attempt_at = ? WHERE id = ?",
            (owner, now + lease_ms, first_at, did),
        )
        rows = yield Stmt(
            "SELECT sid, t, frame FROM webhook_outbox WHERE org = ? AND sid >= ? AND sid <= ?"
            " ORDER BY sid",
            (org, first, last),
        )
        frames = [frame_of(org, s, t, f) for s, t, f in rows.rows if endpoint.wants(t)]
        return Delivery(
            int(did), endpoint.id, org, int(first), int(last), int(attempts), first_at, frames
        )
    # Orgs with frames past the cursor and no pending batch, with whether one of those
    # frames is of a record not sent within the window (cheap to skip orgs whose
    # records all wait; _new_batch decides, on the frames the endpoint wants).
    candidates = yield Stmt(
        "SELECT o.org, min(o.created_at), count(*), max(CASE WHEN w.sent_at IS NULL"
        " THEN 1 ELSE 0 END) FROM webhook_outbox o"
        " LEFT JOIN webhook_cursors c ON c.endpoint = ? AND c.org = o.org"
        " LEFT JOIN webhook_throttle w ON w.endpoint = ? AND w.org = o.org AND w.t = o.t"
        "  AND w.rid = o.rid AND w.sent_at > ?"
        " WHERE o.sid > coalesce(c.sid, 0) AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d"
        "  WHERE d.endpoint = ? AND d.org = o.org AND d.status = 'pending'"
        "  AND d.last_sid > coalesce(c.sid, 0))"
        " GROUP BY o.org ORDER BY 4 DESC, min(o.created_at) LIMIT 50",
        (endpoint.id, endpoint.id, now - throttle_ms, endpoint.id),
    )
    for org, _oldest, count, due in candidates.rows:
        if endpoint.types or due or count >= max_batch:
            delivery = yield from _new_batch(
                endpoint,
                org,
                owner=owner,
                now=now,
                lease_ms=lease_ms,
                max_batch=max_batch,
                throttle_ms=throttle_ms,
                pg=pg,
            )
            if delivery is not None:
                return delivery
    return None


def _new_batch(
    endpoint: EndpointSpec,
    org: str,
    *,
    owner: str,
    now: int,
    lease_ms: int,
    max_batch: int,
    throttle_ms: int,
    pg: bool,
) -> Op:
    yield Stmt(
        "INSERT INTO webhook_cursors (endpoint, org, sid) VALUES (?, ?, 0)"
        " ON CONFLICT (endpoint, org) DO NOTHING",
        (endpoint.id, org),
    )
    cur = yield Stmt(
        "SELECT sid FROM webhook_cursors WHERE endpoint = ? AND org = ?"
        + (" FOR UPDATE SKIP LOCKED" if pg else ""),
        (endpoint.id, org),
    )
    if not cur.rows:
        return None  # another node is claiming for this endpoint and org
    cursor = int(cur.rows[0][0])
    busy = yield Stmt(
        "SELECT 1 FROM webhook_deliveries WHERE endpoint = ? AND org = ? AND status = 'pending'"
        " AND last_sid > ? LIMIT 1",
        (endpoint.id, org, cursor),
    )
    if busy.rows:
        return None
    # One statement, so one snapshot: no frame committed in between can fall into the
    # range without being read (an org's sids commit in order).
    rows = yield Stmt(
        "SELECT sid, t, frame, rid FROM webhook_outbox WHERE org = ? AND sid > ?"
        " ORDER BY sid LIMIT ?",
        (org, cursor, max_batch * SCAN_FACTOR),
    )
    if not rows.rows:
        return None
    wanted = [row for row in rows.rows if endpoint.wants(row[1])][:max_batch]
    if not wanted:
        # Nothing of the endpoint's types: the cursor moves past these frames.
        yield Stmt(
            "UPDATE webhook_cursors SET sid = ? WHERE endpoint = ? AND org = ?",
            (int(rows.rows[-1][0]), endpoint.id, org),
        )
        return None
    full = len(wanted) == max_batch
    records = {(t, rid) for _, t, _, rid in wanted}
    if not full and throttle_ms > 0:
        recent = yield Stmt(
            "SELECT t, rid FROM webhook_throttle WHERE endpoint = ? AND org = ? AND sent_at > ?",
            (endpoint.id, org, now - throttle_ms),
        )
        if records <= {(t, rid) for t, rid in recent.rows}:
            return None  # every record in it was sent within the window: wait for more
    first = int(wanted[0][0])
    last = int(wanted[-1][0]) if full else int(rows.rows[-1][0])
    if throttle_ms > 0:
        yield Stmt(
            "DELETE FROM webhook_throttle WHERE endpoint = ? AND org = ? AND sent_at <= ?",
            (endpoint.id, org, now - throttle_ms),
        )
        ordered = sorted(records)
        for i in range(0, len(ordered), THROTTLE_ROWS):
            chunk = ordered[i : i + THROTTLE_ROWS]
            yield Stmt(
                "INSERT INTO webhook_throttle (endpoint, org, t, rid, sent_at) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (endpoint, org, t, rid) DO UPDATE SET sent_at = excluded.sent_at",
                tuple(v for t, rid in chunk for v in (endpoint.id, org, t, rid, now)),
            )
    made = yield Stmt(
        "INSERT INTO webhook_deliveries (endpoint, org, first_sid, last_sid, status, attempts,"
        " created_at, first_attempt_at, next_attempt_at, lease_owner, lease_expires)"
        " VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?) RETURNING id",
        (endpoint.id, org, first, last, now, now, now, owner, now + lease_ms),
    )
    frames = [frame_of(org, s, t, f) for s, t, f, _ in wanted]
    return Delivery(int(made.rows[0][0]), endpoint.id, org, first, last, 0, now, frames)


def finish(
    delivery_id: int,
    *,
    owner: str,
    outcome: str,
    now: int,
    next_attempt_at: int = 0,
    error: str | None = None,
    status: int | None = None,
    endpoints: Sequence[str] = (),
    pg: bool,
) -> Op:
    """Report a delivery's attempt: ``ok`` (delete the row, advance the cursor, drop
    outbox rows every endpoint has passed), ``retry`` (count the attempt, schedule the
    next, release the lease) or ``park`` (status parked, the cursor moves past it).
    Returns whether the row was still this owner's (``ok`` is applied regardless)."""
    greatest = "greatest" if pg else "max"
    if outcome == "ok":
        gone = yield Stmt(
            "DELETE FROM webhook_deliveries WHERE id = ? RETURNING endpoint, org, last_sid,"
            " lease_owner",
            (delivery_id,),
        )
        if not gone.rows:
            return False
        endpoint, org, last, held_by = gone.rows[0]
        yield from _advance(endpoint, org, int(last), greatest)
        yield from _drop_delivered(org, endpoints)
        return held_by == owner
    if outcome not in ("retry", "park"):
        raise ValueError(f"outcome must be ok, retry or park, got {outcome!r}")
    parked = outcome == "park"
    changed = yield Stmt(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, status = ?,"
        " next_attempt_at = ?, lease_owner = NULL, lease_expires = 0, last_error = ?,"
        " last_status = ? WHERE id = ? AND lease_owner = ? AND status = 'pending'"
        " RETURNING endpoint, org, last_sid",
        (PARKED if parked else PENDING, next_attempt_at, error, status, delivery_id, owner),
    )
    if not changed.rows:
        return False
    if parked:
        endpoint, org, last = changed.rows[0]
        yield from _advance(endpoint, org, int(last), greatest)
    return True


def _advance(endpoint: str, org: str, sid: int, greatest: str) -> Op:
    yield Stmt(
        "INSERT INTO webhook_cursors (endpoint, org, sid) VALUES (?, ?, ?)"
        f" ON CONFLICT (endpoint, org) DO UPDATE SET sid = {greatest}(webhook_cursors.sid,"
        " excluded.sid)",
        (endpoint, org, sid),
    )


def _drop_delivered(org: str, endpoints: Sequence[str]) -> Op:
    """Delete the org's outbox rows every endpoint's cursor has passed, except those of
    a delivery row (parked batches keep their frames, for a replay)."""
    if not endpoints:
        return None
    rows = yield Stmt("SELECT endpoint, sid FROM webhook_cursors WHERE org = ?", (org,))
    cursors = {endpoint: int(sid) for endpoint, sid in rows.rows}
    upto = min(cursors.get(endpoint, 0) for endpoint in endpoints)
    if upto <= 0:
        return None
    yield Stmt(
        "DELETE FROM webhook_outbox WHERE org = ? AND sid <= ? AND NOT EXISTS (SELECT 1 FROM"
        " webhook_deliveries d WHERE d.org = webhook_outbox.org"
        " AND webhook_outbox.sid >= d.first_sid AND webhook_outbox.sid <= d.last_sid)",
        (org, upto),
    )
    return None


def replay(delivery_id: int | None, *, now: int, org: str | None = None) -> Op:
    """Re-queue parked deliveries (one, or all: ``None``; of one org, or any) with their
    sid range (and so their ``webhook-id``); returns how many."""
    where = ""
    params: tuple[Any, ...] = (now,)
    if delivery_id is not None:
        where += " AND id = ?"
        params += (delivery_id,)
    if org is not None:
        where += " AND org = ?"
        params += (org,)
    changed = yield Stmt(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
        " first_attempt_at = NULL, next_attempt_at = ?, lease_owner = NULL, lease_expires = 0"
        " WHERE status = 'parked'" + where,
        params,
    )
    return changed.rowcount


def status(endpoints: Sequence[str], *, limit: int = 1000) -> Op:
    """The cursors, backlogs and deliveries of ``endpoints`` (see :class:`OutboxStatus`)."""
    cursors: dict[tuple[str, str], tuple[int, int]] = {}
    for endpoint in endpoints:
        rows = yield Stmt(
            "SELECT c.org, c.sid, (SELECT count(*) FROM webhook_outbox o"
            "  WHERE o.org = c.org AND o.sid > c.sid) FROM webhook_cursors c WHERE c.endpoint = ?",
            (endpoint,),
        )
        for org, sid, backlog in rows.rows:
            cursors[(endpoint, org)] = (int(sid), int(backlog))
        rows = yield Stmt(
            "SELECT o.org, count(*) FROM webhook_outbox o WHERE NOT EXISTS (SELECT 1 FROM"
            " webhook_cursors c WHERE c.endpoint = ? AND c.org = o.org) GROUP BY o.org",
            (endpoint,),
        )
        for org, backlog in rows.rows:
            cursors[(endpoint, org)] = (0, int(backlog))
    infos: list[DeliveryInfo] = []
    if endpoints:
        rows = yield Stmt(
            "SELECT id, endpoint, org, first_sid, last_sid, status, attempts, first_attempt_at,"
            " next_attempt_at, lease_owner, lease_expires, last_error, last_status,"
            " (SELECT count(*) FROM webhook_outbox o WHERE o.org = d.org"
            "  AND o.sid >= d.first_sid AND o.sid <= d.last_sid)"
            " FROM webhook_deliveries d ORDER BY id LIMIT ?",
            (limit,),
        )
        wanted = set(endpoints)
        for row in rows.rows:
            if row[1] not in wanted:
                continue
            infos.append(
                DeliveryInfo(
                    id=int(row[0]),
                    endpoint=row[1],
                    org=row[2],
                    first_sid=int(row[3]),
                    last_sid=int(row[4]),
                    status=row[5],
                    attempts=int(row[6]),
                    first_attempt_at=None if row[7] is None else int(row[7]),
                    next_attempt_at=int(row[8]),
                    lease_owner=row[9],
                    lease_expires=int(row[10]),
                    last_error=row[11],
                    last_status=None if row[12] is None else int(row[12]),
                    frames=int(row[13]),
                )
            )
    return OutboxStatus(cursors, infos)


def run_sync(conn: Any, op: Op) -> Any:
    """Drive ``op`` on a ``sqlite3`` connection in autocommit mode, in one
    ``BEGIN IMMEDIATE`` transaction (rolled back if anything fails)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = _drive_sync(conn, op)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _drive_sync(conn: Any, op: Op) -> Any:
    try:
        stmt = next(op)
        while True:
            cur = conn.execute(stmt.sql, stmt.params)
            rows = cur.fetchall() if cur.description is not None else []
            stmt = op.send(Rows(rows, cur.rowcount))
    except StopIteration as stop:
        return stop.value


async def run_async(conn: Any, op: Op) -> Any:
    """Drive ``op`` on a psycopg ``AsyncConnection`` (in autocommit mode), in one
    transaction."""
    async with conn.transaction():
        try:
            stmt = next(op)
            while True:
                cur = await conn.execute(stmt.sql.replace("?", "%s"), stmt.params)
                rows = await cur.fetchall() if cur.description is not None else []
                stmt = op.send(Rows(list(rows), cur.rowcount))
        except StopIteration as stop:
            return stop.value
