"""The SQL of document versions on PostgreSQL (table ``versions``, schema version 2).

A version is written in its own transaction on a pooled connection (not in the
writer's group commit): it takes the doc's ``documents`` row lock first, the lock
every transaction writing or deleting the doc takes, so it is ordered against a
deletion (a version of a doc deleted first is not written; a deletion committed
after it deletes it, see ``write_sql._delete_doc``). The caller flushes the writer
before, so the version comes after every write it queued earlier. Ids come from the
``version_ids`` sequence: increasing, never reused.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection

from persistence.store import StoreReadError, VersionInfo
from persistence.versions import CheckedVersion, info_from_row

__all__ = ["MIGRATION", "delete_versions", "get_version", "list_versions", "put_version"]

STORED = 1  # documents.state of a stored doc (see persistence.postgres.schema)

#: Ids are bigints: a larger one (or one below 1) names no version.
_MAX_ID = 2**63 - 1

_COLUMNS = "id, name, created_at, authors, label, state_vector, size"

#: The statements of the migration to schema version 2.
MIGRATION = [
    "CREATE SEQUENCE IF NOT EXISTS version_ids AS bigint",
    """
    CREATE TABLE IF NOT EXISTS versions (
        org text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        id bigint NOT NULL,
        created_at bigint NOT NULL,
        authors text NOT NULL,
        label text,
        state_vector bytea NOT NULL,
        size bigint NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (org, name, id),
        FOREIGN KEY (org, name) REFERENCES documents (org, name) ON DELETE CASCADE
    )
    """,
]


async def put_version(
    conn: AsyncConnection, org: str, name: str, v: CheckedVersion
) -> VersionInfo | None:
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT state FROM documents WHERE org = %s AND name = %s FOR UPDATE", [org, name]
        )
        row = await cur.fetchone()
        if row is None or row[0] != STORED:
            return None
        cur = await conn.execute(
            "INSERT INTO versions (org, name, id, created_at, authors, label, state_vector,"
            " size, state) VALUES (%s, %s, nextval('version_ids'), %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
            [org, name, v.at, v.authors_json, v.label, v.state_vector, len(v.state), v.state],
        )
        inserted = await cur.fetchone()
    assert inserted is not None
    return info_from_row(
        inserted[0], name, v.at, v.authors_json, v.label, v.state_vector, len(v.state)
    )


async def delete_versions(conn: AsyncConnection, org: str, name: str, ids: Sequence[int]) -> int:
    ids = [i for i in ids if 0 < i <= _MAX_ID]
    if not ids:
        return 0
    cur = await conn.execute(
        "DELETE FROM versions WHERE org = %s AND name = %s AND id = ANY(%s)", [org, name, ids]
    )
    return cur.rowcount


async def list_versions(
    conn: AsyncConnection, org: str, name: str, before: int | None, limit: int
) -> list[VersionInfo]:
    bound = _MAX_ID if before is None else max(0, min(before, _MAX_ID))
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM versions WHERE org = %s AND name = %s AND id < %s"
        " ORDER BY id DESC LIMIT %s",
        [org, name, bound, limit],
    )
    return [_info(row) for row in await cur.fetchall()]


async def get_version(
    conn: AsyncConnection, org: str, name: str, version: int
) -> tuple[VersionInfo, bytes] | None:
    if not 0 < version <= _MAX_ID:
        return None
    cur = await conn.execute(
        f"SELECT {_COLUMNS}, state FROM versions WHERE org = %s AND name = %s AND id = %s",
        [org, name, version],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    state = row[7]
    if not isinstance(state, bytes | bytearray | memoryview):
        raise StoreReadError(f"version {version} of {name!r} (org {org!r}) is unreadable")
    return _info(row[:7]), bytes(state)


def _info(row: Sequence) -> VersionInfo:
    if not isinstance(row[5], bytes | bytearray | memoryview):
        raise StoreReadError(f"version {row[0]} of {row[1]!r}: state vector is unreadable")
    return info_from_row(row[0], row[1], row[2], row[3], row[4], bytes(row[5]), row[6])
