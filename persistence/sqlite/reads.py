"""The read side of the SQLite store: a pool of read-only connections and the queries.

Reads run in anyio worker threads on a small pool of read-only connections
(:class:`ReaderPool`; ``check_same_thread=False``: a connection is used by one thread
at a time, it is taken from and returned to the pool under a lock). WAL lets them run
while the writer commits; each read starts a new read transaction, so it sees every
commit that finished before it began, in particular every write whose awaitable
completed.

Each query function takes a ``sqlite3.Connection``; none of them writes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from persistence import sql_rows
from persistence.store import (
    DocInfo,
    DocTail,
    Frame,
    FramePage,
    RecordRow,
    StoreClosedError,
    StoredDoc,
    StoreReadError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ReaderPool:
    """Read-only connections to one file, reused by the worker threads that read.

    Args:
        path: The database file.
        busy_timeout_ms: How long a connection waits for SQLite's locks.
    """

    def __init__(self, path: str, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Run ``fn(connection, *args)`` on a pooled connection (in a worker thread).

        Raises:
            StoreReadError: SQLite failed.
            StoreClosedError: the pool is closed.
        """
        conn = self._acquire()
        reusable = True
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise StoreReadError(f"cannot read {self._path}: {exc}") from exc
        finally:
            if conn.in_transaction:
                # A connection left inside a read transaction would keep serving an
                # old snapshot of the database: never return one to the pool.
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    logger.warning("dropping read connection to %s: %s", self._path, exc)
                    reusable = False
            self._release(conn, reusable)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"SQLiteStore({self._path!r}) is closed")
            if self._idle:
                return self._idle.pop()
        try:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise StoreReadError(f"cannot open {self._path} for reading: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA query_only = ON")  # reads only: every write is the writer's
        except sqlite3.Error as exc:
            conn.close()
            raise StoreReadError(f"cannot open {self._path} for reading: {exc}") from exc
        return conn

    def _release(self, conn: sqlite3.Connection, reusable: bool) -> None:
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(conn)
                return
        conn.close()


# -- queries -----------------------------------------------------------------------------


def load_doc(conn: sqlite3.Connection, org: str, name: str) -> StoredDoc | None:
    # One read transaction: a compaction committed between the snapshot and the log
    # queries would otherwise make us miss the updates it folded in.
    conn.execute("BEGIN")
    try:
        found = _doc_rows(conn, org, name, 0)
    finally:
        conn.execute("COMMIT")
    if found is None:
        return None
    snapshot, rows, last = found
    return StoredDoc(snapshot=snapshot, updates=[data for _, data in rows], last_update_id=last)


def updates_since(conn: sqlite3.Connection, org: str, name: str, since: int) -> DocTail:
    conn.execute("BEGIN")
    try:
        found = _doc_rows(conn, org, name, since)
    finally:
        conn.execute("COMMIT")
    if found is None:
        return DocTail(snapshot=None, updates=[], last_update_id=0)
    snapshot, rows, last = found
    return DocTail(snapshot=snapshot, updates=rows, last_update_id=last)


def _doc_rows(
    conn: sqlite3.Connection, org: str, name: str, since: int
) -> tuple[bytes | None, list[tuple[int, bytes]], int] | None:
    """``(snapshot, log rows, newest update id)`` of a doc for a replica holding every
    update up to ``since``: the snapshot (``None`` unless it folded updates after
    ``since``) and the log rows after it, or after ``since``. ``None``: no such doc.
    Inside the caller's read transaction."""
    key = (org, name)
    doc = conn.execute(
        "SELECT last_update_id FROM documents WHERE org = ? AND name = ?", key
    ).fetchone()
    if doc is None:
        return None
    last = doc[0]
    if not isinstance(last, int):
        raise StoreReadError(f"doc {name!r} (org {org!r}) has a bad last_update_id")
    snap = conn.execute(
        "SELECT data, upto_update_id FROM snapshots WHERE org = ? AND name = ?", key
    ).fetchone()
    snapshot: bytes | None = None
    after = since
    if snap is not None:
        data, upto = snap
        if not isinstance(upto, int):
            raise StoreReadError(f"snapshot of {name!r} (org {org!r}) has a bad upto_update_id")
        if since == 0 or upto > since:
            # The log before ``upto`` is gone: the replica needs the snapshot.
            if not isinstance(data, bytes):
                raise StoreReadError(
                    f"snapshot of {name!r} (org {org!r}) is unreadable: "
                    f"data is {type(data).__name__}, not bytes"
                )
            snapshot = data
            after = max(since, upto)
    rows = conn.execute(
        "SELECT id, data FROM updates WHERE org = ? AND name = ? AND id > ? ORDER BY id",
        (org, name, after),
    ).fetchall()
    for update_id, data in rows:
        if not isinstance(data, bytes):
            raise StoreReadError(
                f"update {update_id} of {name!r} (org {org!r}) is unreadable: "
                f"data is {type(data).__name__}, not bytes"
            )
    return snapshot, [(int(i), d) for i, d in rows], last


def has_doc(conn: sqlite3.Connection, org: str, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM documents WHERE org = ? AND name = ?", (org, name))
    return row.fetchone() is not None


def list_docs(
    conn: sqlite3.Connection,
    org: str,
    prefix: str,
    prefix_end: str | None,
    after: str | None,
    limit: int,
) -> list[DocInfo]:
    where = ["d.org = ?", "d.name >= ?"]
    params: list[Any] = [org, prefix]
    if prefix_end is not None:
        where.append("d.name < ?")
        params.append(prefix_end)
    if after is not None:
        where.append("d.name > ?")
        params.append(after)
    params.append(limit)
    rows = conn.execute(
        "SELECT d.name, d.updated_at,"
        " coalesce((SELECT length(s.data) FROM snapshots s"
        "           WHERE s.org = d.org AND s.name = d.name), 0),"
        " (SELECT coalesce(sum(length(u.data)), 0) FROM updates u"
        "  WHERE u.org = d.org AND u.name = d.name),"
        " (SELECT count(*) FROM updates u WHERE u.org = d.org AND u.name = d.name)"
        f" FROM documents d WHERE {' AND '.join(where)} ORDER BY d.name LIMIT ?",
        params,
    ).fetchall()
    return [
        DocInfo(name=name, size=int(snap + logged), updated_at=int(updated_at), update_count=count)
        for name, updated_at, snap, logged, count in rows
    ]


def frames_since(
    conn: sqlite3.Connection, org: str, since: int, limit: int, t: str | None
) -> list[Frame]:
    sql = f"SELECT {sql_rows.FRAME_COLUMNS} FROM frames WHERE org = ? AND sid > ?"
    params: list[Any] = [org, since]
    if t is not None:
        sql += " AND t = ?"
        params.append(t)
    sql += " ORDER BY sid LIMIT ?"
    params.append(limit)
    return sql_rows.frames(conn.execute(sql, params).fetchall())


def read_frames(
    conn: sqlite3.Connection, org: str, since: int, limit: int, t: str | None
) -> FramePage:
    # One read transaction: the bounds and the page describe the same snapshot, so a
    # caller can advance to ``newest`` when the page is short without skipping a frame.
    conn.execute("BEGIN")
    try:
        oldest, newest = frame_bounds(conn, org)
        frames = frames_since(conn, org, since, limit, t)
    finally:
        conn.execute("COMMIT")
    return FramePage(frames=frames, oldest=oldest, newest=newest)


def record_frames(
    conn: sqlite3.Connection, org: str, t: str, id: str, since: int, limit: int
) -> list[Frame]:
    rows = conn.execute(
        f"SELECT {sql_rows.FRAME_COLUMNS} FROM frames"
        " WHERE org = ? AND t = ? AND id = ? AND sid > ? ORDER BY sid LIMIT ?",
        (org, t, id, since, limit),
    ).fetchall()
    return sql_rows.frames(rows)


def record_writers(
    conn: sqlite3.Connection,
    org: str,
    t: str,
    id: str,
    since: int,
    fields: list[str],
    exclude: tuple[str | None, str | None],
) -> list[tuple[str | None, str | None, int]]:
    # Answered from the (org, t, id, sid) index and SQLite's JSON functions: no frame
    # is decoded in Python. Per field, the newest frame after ``since`` of another
    # writer that set it; ``None`` as the field: the newest such delete.
    conn.execute("BEGIN")
    try:
        who, client_id = exclude
        other = "NOT (f.who IS ? AND json_extract(f.ctx, '$.client_id') IS ?)"
        where = f"f.org = ? AND f.t = ? AND f.id = ? AND f.sid > ? AND {other}"
        params = (org, t, id, since, who, client_id)
        rows = conn.execute(
            f"SELECT j.key, f.who, max(f.sid) FROM frames f, json_each(f.p) j WHERE {where}"
            " AND f.op != 'd' AND j.key IN (SELECT value FROM json_each(?)) GROUP BY j.key",
            (*params, json.dumps(fields)),
        ).fetchall()
        deleted = conn.execute(
            f"SELECT NULL, f.who, max(f.sid) FROM frames f WHERE {where} AND f.op = 'd'", params
        ).fetchone()
    finally:
        conn.execute("COMMIT")
    if deleted is not None and deleted[2] is not None:
        rows.append(deleted)
    return [(key, who_, int(sid)) for key, who_, sid in rows]


def get_record(conn: sqlite3.Connection, org: str, t: str, id: str) -> RecordRow | None:
    row = conn.execute(
        f"SELECT {sql_rows.RECORD_COLUMNS} FROM records WHERE org = ? AND t = ? AND id = ?",
        (org, t, id),
    ).fetchone()
    return None if row is None else sql_rows.record(row)


def list_records(
    conn: sqlite3.Connection,
    org: str,
    t: str | None,
    after: tuple[str, str] | None,
    limit: int,
) -> tuple[list[RecordRow], int]:
    where = ["org = ?"]
    params: list[Any] = [org]
    if t is not None:
        where.append("t = ?")
        params.append(t)
    if after is not None:
        where.append("(t, id) > (?, ?)")
        params += after
    params.append(limit)
    conn.execute("BEGIN")
    try:
        newest = frame_bounds(conn, org)[1]
        rows = conn.execute(
            f"SELECT {sql_rows.RECORD_COLUMNS} FROM records WHERE {' AND '.join(where)}"
            " ORDER BY t, id LIMIT ?",
            params,
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    return [sql_rows.record(row) for row in rows], newest


def stale_records(conn: sqlite3.Connection, limit: int) -> list[tuple[str, str]]:
    # A record doc (a name with a slash after a non-empty type) whose newest update
    # is not covered by its stored projection: the frame of its last changes was
    # lost (kill -9 inside the coalescing window), or it never had one.
    rows = conn.execute(
        "SELECT d.org, d.name FROM documents d"
        " LEFT JOIN records r ON r.org = d.org"
        "  AND r.t = substr(d.name, 1, instr(d.name, '/') - 1)"
        "  AND r.id = substr(d.name, instr(d.name, '/') + 1)"
        " WHERE instr(d.name, '/') > 1 AND length(d.name) > instr(d.name, '/')"
        " AND coalesce(r.update_id, -1) < d.last_update_id"
        " LIMIT ?",
        (limit,),
    ).fetchall()
    return [(org, name) for org, name in rows]


def frame_bounds(conn: sqlite3.Connection, org: str) -> tuple[int, int]:
    # Two subqueries, so that each is answered from the (org, sid) index alone.
    lo, hi = conn.execute(
        "SELECT (SELECT min(sid) FROM frames WHERE org = ?),"
        " (SELECT max(sid) FROM frames WHERE org = ?)",
        (org, org),
    ).fetchone()
    if lo is None:
        return (0, 0)
    return (int(lo) - 1, int(hi))


def get_mutation(conn: sqlite3.Connection, org: str, client_tx_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT result, sid FROM mutations WHERE org = ? AND client_tx_id = ?", (org, client_tx_id)
    ).fetchone()
    if row is None:
        return None
    return sql_rows.mutation_result(row, org, client_tx_id)


# -- helpers -----------------------------------------------------------------------------
