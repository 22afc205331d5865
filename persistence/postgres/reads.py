"""The read side of the PostgreSQL store: queries run on pooled connections.

Each function takes an autocommit connection. Reads made of several statements run in
one ``REPEATABLE READ READ ONLY`` transaction (:func:`snapshot`), so that they describe
one state of the database, as SQLite's read transactions do; single statements see
every transaction committed before they start (in particular every write whose
commit completed). Semantics are those of :mod:`persistence.sqlite.reads`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection

from persistence import paging, sql_rows
from persistence.store import (
    DocInfo,
    DocTail,
    Frame,
    FramePage,
    RecordRow,
    StoredDoc,
    StoreReadError,
)

STORED = 1  # documents.state of a stored doc (see persistence.postgres.schema)


@asynccontextmanager
async def snapshot(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn


def _bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise StoreReadError(f"{what} is unreadable: data is {type(value).__name__}, not bytes")


async def load_doc(conn: AsyncConnection, org: str, name: str) -> StoredDoc | None:
    async with snapshot(conn):
        cur = await conn.execute(
            "SELECT 1 FROM documents WHERE org = %s AND name = %s AND state = 1", [org, name]
        )
        if await cur.fetchone() is None:
            return None
        cur = await conn.execute(
            "SELECT data, upto_update_id FROM snapshots WHERE org = %s AND name = %s", [org, name]
        )
        snap = await cur.fetchone()
        snapshot_data: bytes | None = None
        upto = 0
        if snap is not None:
            snapshot_data = _bytes(snap[0], f"snapshot of {name!r} (org {org!r})")
            upto = int(snap[1])
        cur = await conn.execute(
            "SELECT id, data FROM updates WHERE org = %s AND name = %s AND id > %s ORDER BY id",
            [org, name, upto],
        )
        rows = await cur.fetchall()
    updates = [_bytes(data, f"update {uid} of {name!r} (org {org!r})") for uid, data in rows]
    last = max(upto, int(rows[-1][0])) if rows else upto
    return StoredDoc(snapshot=snapshot_data, updates=updates, last_update_id=last)


async def updates_since(conn: AsyncConnection, org: str, name: str, since: int) -> DocTail:
    async with snapshot(conn):
        cur = await conn.execute(
            "SELECT last_update_id FROM documents WHERE org = %s AND name = %s AND state = 1",
            [org, name],
        )
        doc = await cur.fetchone()
        if doc is None:
            return DocTail(snapshot=None, updates=[], last_update_id=0)
        cur = await conn.execute(
            "SELECT data, upto_update_id FROM snapshots WHERE org = %s AND name = %s", [org, name]
        )
        snap = await cur.fetchone()
        snapshot_data: bytes | None = None
        after = since
        if snap is not None and int(snap[1]) > since:
            # The log up to the snapshot's id is gone: the replica needs the snapshot.
            snapshot_data = _bytes(snap[0], f"snapshot of {name!r} (org {org!r})")
            after = int(snap[1])
        cur = await conn.execute(
            "SELECT id, data FROM updates WHERE org = %s AND name = %s AND id > %s ORDER BY id",
            [org, name, after],
        )
        rows = await cur.fetchall()
    updates = [
        (int(uid), _bytes(data, f"update {uid} of {name!r} (org {org!r})")) for uid, data in rows
    ]
    last = max([int(doc[0]), after, *(uid for uid, _ in updates)])
    return DocTail(snapshot=snapshot_data, updates=updates, last_update_id=last)


async def has_doc(conn: AsyncConnection, org: str, name: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM documents WHERE org = %s AND name = %s AND state = 1", [org, name]
    )
    return await cur.fetchone() is not None


async def list_docs(
    conn: AsyncConnection,
    org: str,
    prefix: str,
    prefix_end: str | None,
    after: str | None,
    limit: int,
) -> list[DocInfo]:
    where = ["d.org = %s", "d.state = 1", "d.name >= %s"]
    params: list[Any] = [org, prefix]
    if prefix_end is not None:
        where.append("d.name < %s")
        params.append(prefix_end)
    if after is not None:
        where.append("d.name > %s")
        params.append(after)
    params.append(limit)
    cur = await conn.execute(
        "SELECT d.name, d.updated_at,"
        " coalesce((SELECT octet_length(s.data) FROM snapshots s"
        "           WHERE s.org = d.org AND s.name = d.name), 0),"
        " (SELECT coalesce(sum(octet_length(u.data)), 0) FROM updates u"
        "  WHERE u.org = d.org AND u.name = d.name),"
        " (SELECT count(*) FROM updates u WHERE u.org = d.org AND u.name = d.name)"
        f" FROM documents d WHERE {' AND '.join(where)} ORDER BY d.name LIMIT %s",
        params,
    )
    return [
        DocInfo(
            name=name, size=int(snap + logged), updated_at=int(updated_at), update_count=int(count)
        )
        for name, updated_at, snap, logged, count in await cur.fetchall()
    ]


async def frames_since(
    conn: AsyncConnection, org: str, since: int, limit: int, t: str | None
) -> list[Frame]:
    sql = f"SELECT {sql_rows.FRAME_COLUMNS} FROM frames WHERE org = %s AND sid > %s"
    params: list[Any] = [org, since]
    if t is not None:
        sql += " AND t = %s"
        params.append(t)
    sql += " ORDER BY sid LIMIT %s"
    params.append(limit)
    cur = await conn.execute(sql, params)  # type: ignore[arg-type]
    return sql_rows.frames(await cur.fetchall())


async def read_frames(
    conn: AsyncConnection, org: str, since: int, limit: int, t: str | None
) -> FramePage:
    # One snapshot: the bounds and the page describe the same state, so a caller can
    # advance to ``newest`` when the page is short without skipping a frame.
    async with snapshot(conn):
        oldest, newest = await frame_bounds(conn, org)
        frames = await frames_since(conn, org, since, limit, t)
    return FramePage(frames=frames, oldest=oldest, newest=newest)


async def record_frames(
    conn: AsyncConnection, org: str, t: str, id: str, since: int, limit: int
) -> list[Frame]:
    cur = await conn.execute(
        f"SELECT {sql_rows.FRAME_COLUMNS} FROM frames"
        " WHERE org = %s AND t = %s AND id = %s AND sid > %s ORDER BY sid LIMIT %s",
        [org, t, id, since, limit],
    )
    return sql_rows.frames(await cur.fetchall())


async def record_writers(
    conn: AsyncConnection,
    org: str,
    t: str,
    id: str,
    since: int,
    fields: list[str],
    exclude: tuple[str | None, str | None],
) -> list[tuple[str | None, str | None, int]]:
    # From the (org, t, id, sid) index and PostgreSQL's json functions: no frame is
    # decoded in Python. ``json``, not ``jsonb``: jsonb refuses the \u0000 escape
    # that strict JSON text may hold. Per field, the newest frame after ``since`` of
    # another writer that set it; ``None`` as the field: the newest such delete.
    who, client_id = exclude
    other = (
        "NOT (f.who IS NOT DISTINCT FROM %s"
        " AND (f.ctx::json ->> 'client_id') IS NOT DISTINCT FROM %s)"
    )
    where = f"f.org = %s AND f.t = %s AND f.id = %s AND f.sid > %s AND {other}"
    params: list[Any] = [org, t, id, since, who, client_id]
    async with snapshot(conn):
        cur = await conn.execute(
            "SELECT DISTINCT ON (j.key) j.key, f.who, f.sid"
            f" FROM frames f, json_object_keys(f.p::json) AS j(key) WHERE {where}"
            " AND f.op <> 'd' AND j.key = ANY(%s::text[]) ORDER BY j.key, f.sid DESC",
            [*params, fields],
        )
        rows: list[tuple[str | None, str | None, int]] = [
            (key, who_, int(sid)) for key, who_, sid in await cur.fetchall()
        ]
        cur = await conn.execute(
            f"SELECT f.who, f.sid FROM frames f WHERE {where} AND f.op = 'd'"
            " ORDER BY f.sid DESC LIMIT 1",
            params,
        )
        deleted = await cur.fetchone()
    if deleted is not None:
        rows.append((None, deleted[0], int(deleted[1])))
    return rows


async def get_record(conn: AsyncConnection, org: str, t: str, id: str) -> RecordRow | None:
    cur = await conn.execute(
        f"SELECT {sql_rows.RECORD_COLUMNS} FROM records WHERE org = %s AND t = %s AND id = %s",
        [org, t, id],
    )
    row = await cur.fetchone()
    return None if row is None else sql_rows.record(row)


async def list_records(
    conn: AsyncConnection,
    org: str,
    t: str | None,
    after: tuple[str, str] | None,
    limit: int,
) -> tuple[list[RecordRow], int]:
    where = ["org = %s"]
    params: list[Any] = [org]
    if t is not None:
        where.append("t = %s")
        params.append(t)
    if after is not None:
        where.append("(t, id) > (%s, %s)")
        params += list(after)
    params.append(limit)
    async with snapshot(conn):
        newest = (await frame_bounds(conn, org))[1]
        cur = await conn.execute(
            f"SELECT {sql_rows.RECORD_COLUMNS} FROM records WHERE {' AND '.join(where)}"
            " ORDER BY t, id LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    return [sql_rows.record(row) for row in rows], newest


async def stale_records(conn: AsyncConnection, limit: int) -> list[tuple[str, str]]:
    # A record doc (a name with a slash after a non-empty type) whose newest update
    # is not covered by its stored projection. ``last_update_id`` is the newest id the
    # doc's log or snapshot covers.
    cur = await conn.execute(
        "SELECT d.org, d.name FROM documents d"
        " LEFT JOIN records r ON r.org = d.org"
        "  AND r.t = substr(d.name, 1, strpos(d.name, '/') - 1)"
        "  AND r.id = substr(d.name, strpos(d.name, '/') + 1)"
        " WHERE d.state = 1 AND strpos(d.name, '/') > 1"
        " AND length(d.name) > strpos(d.name, '/')"
        " AND coalesce(r.update_id, -1) < d.last_update_id"
        " LIMIT %s",
        [limit],
    )
    return [(org, name) for org, name in await cur.fetchall()]


async def frame_bounds(conn: AsyncConnection, org: str) -> tuple[int, int]:
    # Two subqueries, so that each is answered from the (org, sid) key alone.
    cur = await conn.execute(
        "SELECT (SELECT min(sid) FROM frames WHERE org = %s),"
        " (SELECT max(sid) FROM frames WHERE org = %s)",
        [org, org],
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return (0, 0)
    return (int(row[0]) - 1, int(row[1]))


async def get_mutation(conn: AsyncConnection, org: str, client_tx_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT result, sid FROM mutations WHERE org = %s AND client_tx_id = %s",
        [org, client_tx_id],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return sql_rows.mutation_result(row, org, client_tx_id)


# -- helpers -----------------------------------------------------------------------------


def decode_cursor(cursor: str) -> str:
    """:func:`persistence.paging.decode_cursor`, and no NUL: no stored name holds one
    (PostgreSQL ``text`` cannot), and the query would fail on it."""
    name = paging.decode_cursor(cursor)
    if "\x00" in name:
        raise ValueError(f"invalid cursor {cursor!r}")
    return name
