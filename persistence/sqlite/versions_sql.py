"""The SQL of document versions on SQLite (table ``versions``, schema version 5).

Writes run on the writer thread between two group commits (as
:meth:`~persistence.sqlite.SQLiteStore.run_in_writer` calls do), each in its own
``BEGIN IMMEDIATE`` transaction, so a version is behind every write queued before it
and durable when its call returns. Ids come from the table's ``AUTOINCREMENT``
sequence: never reused, not after deletes. A version's row references its doc's
``documents`` row with ``ON DELETE CASCADE``: deleting the doc deletes its versions
in the same transaction, and no version of a doc that is not stored can be written.

Reads take a pooled read-only connection (:mod:`persistence.sqlite.reads`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sqlite_utils import Database

from persistence.store import StoreReadError, StoreWriteError, VersionInfo
from persistence.versions import CheckedVersion, info_from_row

__all__ = ["delete_versions", "get_version", "list_versions", "migrate_v5", "put_version"]

_COLUMNS = "id, name, created_at, authors, label, state_vector, size"
#: Ids are 64-bit: a larger one (or a negative one) names no version.
_MAX_ID = 2**63 - 1


def migrate_v5(db: Database) -> None:
    """Document versions: one row per version, its whole state with it."""
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS versions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            org TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            authors TEXT NOT NULL,
            label TEXT,
            state_vector BLOB NOT NULL,
            size INTEGER NOT NULL,
            state BLOB NOT NULL,
            FOREIGN KEY (org, name) REFERENCES documents (org, name) ON DELETE CASCADE
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_versions_doc ON versions (org, name, id)")


def _write(conn: sqlite3.Connection, path: str, statements: list[tuple[str, tuple]]) -> list:
    """Run ``statements`` in one transaction; the cursors' results, in order."""
    results = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql, args in statements:
            cur = conn.execute(sql, args)
            results.append(cur)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
        raise StoreWriteError(f"write to {path} failed: {exc}") from exc
    return results


def put_version(
    conn: sqlite3.Connection, path: str, org: str, name: str, v: CheckedVersion
) -> VersionInfo | None:
    """Insert the version if the doc is stored; its info, else ``None``."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        if (
            conn.execute(
                "SELECT 1 FROM documents WHERE org = ? AND name = ?", (org, name)
            ).fetchone()
            is None
        ):
            conn.execute("ROLLBACK")
            return None
        cur = conn.execute(
            "INSERT INTO versions (org, name, created_at, authors, label, state_vector, size,"
            " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (org, name, v.at, v.authors_json, v.label, v.state_vector, len(v.state), v.state),
        )
        version = cur.lastrowid
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
        raise StoreWriteError(f"write to {path} failed: {exc}") from exc
    assert version is not None
    return info_from_row(version, name, v.at, v.authors_json, v.label, v.state_vector, len(v.state))


def delete_versions(
    conn: sqlite3.Connection, path: str, org: str, name: str, ids: Sequence[int]
) -> int:
    ids = [i for i in ids if 0 < i <= _MAX_ID]
    if not ids:
        return 0
    statements = []
    for start in range(0, len(ids), 500):  # well within SQLite's bound on parameters
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"DELETE FROM versions WHERE org = ? AND name = ? AND id IN ({marks})"
        statements.append((sql, (org, name, *chunk)))
    return sum(cur.rowcount for cur in _write(conn, path, statements))


def list_versions(
    conn: sqlite3.Connection, org: str, name: str, before: int | None, limit: int
) -> list[VersionInfo]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM versions WHERE org = ? AND name = ? AND id < ?"
        " ORDER BY id DESC LIMIT ?",
        (org, name, _MAX_ID if before is None else max(0, min(before, _MAX_ID)), limit),
    ).fetchall()
    return [_info(row) for row in rows]


def get_version(
    conn: sqlite3.Connection, org: str, name: str, version: int
) -> tuple[VersionInfo, bytes] | None:
    if not 0 < version <= _MAX_ID:
        return None
    row = conn.execute(
        f"SELECT {_COLUMNS}, state FROM versions WHERE org = ? AND name = ? AND id = ?",
        (org, name, version),
    ).fetchone()
    if row is None:
        return None
    state = row[7]
    if not isinstance(state, bytes):
        raise StoreReadError(f"version {version} of {name!r} (org {org!r}) is unreadable")
    return _info(row[:7]), state


def _info(row: Sequence) -> VersionInfo:
    if not isinstance(row[5], bytes):
        raise StoreReadError(f"version {row[0]} of {row[1]!r}: state vector is unreadable")
    return info_from_row(*row)
