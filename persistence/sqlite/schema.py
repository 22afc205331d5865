"""The SQLite schema of crdt-sync and its migrations.

The version lives in a one-row ``schema_version`` table; an empty file is version 0.
:func:`migrate` runs inside ``BEGIN IMMEDIATE`` so that several processes (or several
:class:`~persistence.sqlite.SQLiteStore` instances) opening one new file at once
serialise on SQLite's write lock: the first creates the tables, the others find them
at the current version and do nothing. Every statement is also ``IF NOT EXISTS``.

Every key carries the tenant column ``org`` (see DESIGN.md, "Tenants").

To change the schema, append a function to :data:`MIGRATIONS`; never edit a released one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from sqlite_utils import Database
from sqlite_utils.db import ForeignKey

from persistence.sqlite.versions_sql import migrate_v5 as _v5
from persistence.store import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "TABLES", "migrate", "read_version"]

logger = logging.getLogger(__name__)


def _doc_fk(table: str) -> ForeignKey:
    # A log row or snapshot without its documents row would be invisible to load()
    # and list_docs(); the constraint makes such a write fail instead.
    return ForeignKey(
        table=table,
        column=None,
        other_table="documents",
        other_column=None,
        columns=("org", "name"),
        other_columns=("org", "name"),
        is_compound=True,
        on_delete="CASCADE",
    )


def _v1(db: Database) -> None:
    """Initial schema: documents, update log, snapshots, frame log, idempotency keys."""
    db.create_table(
        "documents",
        {"org": str, "name": str, "created_at": int, "updated_at": int},
        pk=("org", "name"),
        not_null=["org", "name", "created_at", "updated_at"],
        if_not_exists=True,
    )
    # sqlite-utils has no public switch for AUTOINCREMENT, which we need so that
    # update ids and frame sids are never reused after rows are deleted (a plain
    # INTEGER PRIMARY KEY may hand out max(rowid)+1 again after the newest row goes).
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS updates (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            org TEXT NOT NULL,
            name TEXT NOT NULL,
            data BLOB NOT NULL,
            actor TEXT,
            at INTEGER NOT NULL,
            FOREIGN KEY (org, name) REFERENCES documents (org, name) ON DELETE CASCADE
        )
        """
    )
    db["updates"].create_index(["org", "name", "id"], "idx_updates_doc", if_not_exists=True)
    db.create_table(
        "snapshots",
        {"org": str, "name": str, "data": bytes, "upto_update_id": int, "at": int},
        pk=("org", "name"),
        not_null=["org", "name", "data", "upto_update_id", "at"],
        foreign_keys=[_doc_fk("snapshots")],
        if_not_exists=True,
    )
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS frames (
            sid INTEGER PRIMARY KEY AUTOINCREMENT,
            org TEXT NOT NULL,
            t TEXT NOT NULL,
            id TEXT NOT NULL,
            op TEXT NOT NULL,
            p TEXT NOT NULL,
            who TEXT,
            at INTEGER NOT NULL,
            ctx TEXT NOT NULL
        )
        """
    )
    db["frames"].create_index(["org", "sid"], "idx_frames_org_sid", if_not_exists=True)
    db["frames"].create_index(["org", "t", "sid"], "idx_frames_org_t_sid", if_not_exists=True)
    db.create_table(
        "mutations",
        {"org": str, "client_tx_id": str, "result": str, "at": int},
        pk=("org", "client_tx_id"),
        not_null=["org", "client_tx_id", "result", "at"],
        if_not_exists=True,
    )


def _v2(db: Database) -> None:
    """The SyncFrame feed: current record projections, per-record frame lookups,
    and the sid a mutation produced (answered again on replay)."""
    db.create_table(
        "records",
        {
            "org": str,
            "t": str,
            "id": str,
            "fields": str,
            "sid": int,
            "update_id": int,
            "updated_at": int,
        },
        pk=("org", "t", "id"),
        not_null=["org", "t", "id", "fields", "sid", "update_id", "updated_at"],
        if_not_exists=True,
    )
    db["frames"].create_index(["org", "t", "id", "sid"], "idx_frames_record", if_not_exists=True)
    if "sid" not in db["mutations"].columns_dict:
        db.execute("ALTER TABLE mutations ADD COLUMN sid INTEGER")


def _v3(db: Database) -> None:
    """Per-tenant sids: each org's frames are numbered 1, 2, 3, ... on their own.

    Up to version 2 one AUTOINCREMENT sequence numbered every org's frames, so a client
    saw its sids jump by what other tenants wrote. ``frames`` is rebuilt keyed by
    ``(org, sid)`` (SQLite's implicit rowid stays internal) and ``frame_seq`` holds
    each org's last assigned sid, advanced by the writer in the transaction that logs
    the frames (see :mod:`persistence.sqlite.write_sql`), so sids are never reused even
    after every frame of an org is trimmed.

    Existing frames keep their sids (within one org they are already strictly
    increasing; the gaps left by other orgs stay). Each org continues after the
    newest sid the file shows for it: its newest frame (the server's trim always
    keeps at least one per org), its records' and its idempotency keys' sids.
    Copying the frame log is one pass inside the migration's transaction.
    """
    db.execute(
        "CREATE TABLE frame_seq (org TEXT NOT NULL PRIMARY KEY, last_sid INTEGER NOT NULL)"
        " WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO frame_seq (org, last_sid) SELECT org, max(sid) FROM ("
        " SELECT org, max(sid) AS sid FROM frames GROUP BY org"
        " UNION ALL SELECT org, max(sid) FROM records GROUP BY org"
        " UNION ALL SELECT org, max(sid) FROM mutations WHERE sid IS NOT NULL GROUP BY org"
        ") GROUP BY org"
    )
    # The old indexes go first: their names are reused on the new table.
    for index in ("idx_frames_org_sid", "idx_frames_org_t_sid", "idx_frames_record"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    db.execute("ALTER TABLE frames RENAME TO frames_v2")
    db.execute(
        """
        CREATE TABLE frames (
            org TEXT NOT NULL,
            sid INTEGER NOT NULL,
            t TEXT NOT NULL,
            id TEXT NOT NULL,
            op TEXT NOT NULL,
            p TEXT NOT NULL,
            who TEXT,
            at INTEGER NOT NULL,
            ctx TEXT NOT NULL
        )
        """
    )
    db.execute(
        "INSERT INTO frames (rowid, org, sid, t, id, op, p, who, at, ctx)"
        " SELECT sid, org, sid, t, id, op, p, who, at, ctx FROM frames_v2 ORDER BY sid"
    )
    db.execute("DROP TABLE frames_v2")
    # The key: a sid assigned twice in one org fails its transaction, never overwrites.
    db.execute("CREATE UNIQUE INDEX idx_frames_org_sid ON frames (org, sid)")
    db.execute("CREATE INDEX idx_frames_org_t_sid ON frames (org, t, sid)")
    db.execute("CREATE INDEX idx_frames_record ON frames (org, t, id, sid)")


def _v4(db: Database) -> None:
    """Update ids assigned at commit (store contract v2).

    ``documents.last_update_id`` is the doc's newest update id: the writer reads it in
    the transaction that appends the next update (that update's ``prev_update_id``) and
    advances it there. It survives compaction (which drops the log rows), so the prev
    chain of a doc never breaks. Existing docs start at their newest update id: the
    newest log row, else the snapshot's.

    ``deleted_docs`` remembers the docs deleted (a tombstone each), so that a
    compaction arriving after the delete (another writer still holding the doc) does
    not bring the doc back; an append re-creates the doc and clears its tombstone.
    """
    db.execute("ALTER TABLE documents ADD COLUMN last_update_id INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE documents SET last_update_id = max("
        " coalesce((SELECT max(u.id) FROM updates u"
        "           WHERE u.org = documents.org AND u.name = documents.name), 0),"
        " coalesce((SELECT s.upto_update_id FROM snapshots s"
        "           WHERE s.org = documents.org AND s.name = documents.name), 0))"
    )
    db.execute(
        "CREATE TABLE deleted_docs (org TEXT NOT NULL, name TEXT NOT NULL, at INTEGER NOT NULL,"
        " PRIMARY KEY (org, name)) WITHOUT ROWID"
    )


def _v6(db: Database) -> None:
    """Outgoing webhooks (see :mod:`persistence.outbox`): the outbox (a copy of every
    frame logged while webhooks are configured, written in the frame's transaction),
    each endpoint's cursor per org, and the deliveries (claimed batches, leased)."""
    db.execute(
        "CREATE TABLE webhook_outbox (org TEXT NOT NULL, sid INTEGER NOT NULL,"
        " t TEXT NOT NULL, frame TEXT NOT NULL, created_at INTEGER NOT NULL,"
        " PRIMARY KEY (org, sid)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE webhook_cursors (endpoint TEXT NOT NULL, org TEXT NOT NULL,"
        " sid INTEGER NOT NULL, PRIMARY KEY (endpoint, org)) WITHOUT ROWID"
    )
    db.execute(
        """
        CREATE TABLE webhook_deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            endpoint TEXT NOT NULL,
            org TEXT NOT NULL,
            first_sid INTEGER NOT NULL,
            last_sid INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'parked')),
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            first_attempt_at INTEGER,
            next_attempt_at INTEGER NOT NULL,
            lease_owner TEXT,
            lease_expires INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_status INTEGER,
            UNIQUE (endpoint, org, first_sid)
        )
        """
    )
    db.execute(
        "CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries"
        " (endpoint, status, next_attempt_at)"
    )


def _v7(db: Database) -> None:
    """Webhooks throttled per record: the outbox names each frame's record (``rid``,
    filled from the frame for rows already there), and ``webhook_throttle`` holds when
    an endpoint last sent each record (rows older than the window are dropped)."""
    db.execute("ALTER TABLE webhook_outbox ADD COLUMN rid TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE webhook_outbox SET rid = json_extract(frame, '$.id')")
    db.execute(
        "CREATE TABLE webhook_throttle (endpoint TEXT NOT NULL, org TEXT NOT NULL,"
        " t TEXT NOT NULL, rid TEXT NOT NULL, sent_at INTEGER NOT NULL,"
        " PRIMARY KEY (endpoint, org, t, rid)) WITHOUT ROWID"
    )


#: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7]
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = frozenset(
    {
        "documents",
        "deleted_docs",
        "updates",
        "snapshots",
        "frames",
        "frame_seq",
        "mutations",
        "records",
        "schema_version",
        "versions",
        "webhook_outbox",
        "webhook_cursors",
        "webhook_deliveries",
        "webhook_throttle",
    }
)


def read_version(db: Database, where: str = "database") -> int:
    """Return the schema version of ``db``: 0 for an empty database.

    Args:
        db: The database.
        where: How to name the database in error messages (its path).

    Returns:
        The version recorded in ``schema_version``.

    Raises:
        StoreError: the database has tables but is not a crdt-sync database.
    """
    names = set(db.table_names())
    names.discard("sqlite_sequence")
    if not names:
        return 0
    if "schema_version" not in names:
        raise StoreError(
            f"{where} is not a crdt-sync database "
            f"(it has tables {sorted(names)} but no schema_version)"
        )
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(db: Database, where: str = "database") -> tuple[int, int]:
    """Create or upgrade the schema of ``db`` in one ``BEGIN IMMEDIATE`` transaction.

    The connection under ``db`` must be in autocommit mode (``isolation_level=None``).

    Args:
        db: The database, opened on the connection that will write.
        where: How to name the database in error messages (its path).

    Returns:
        ``(version found, version now)``.

    Raises:
        StoreError: the file is not a crdt-sync database, or its schema is newer
            than this code knows.
        sqlite3.Error: SQLite failed (the transaction is rolled back).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        found = read_version(db, where)
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{where} has schema version {found}, newer than this crdt-sync "
                f"supports ({SCHEMA_VERSION}); upgrade crdt-sync"
            )
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](db)
        if found < SCHEMA_VERSION:
            db.create_table(
                "schema_version", {"version": int}, not_null=["version"], if_not_exists=True
            )
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                # The original error is the one worth raising; note this one.
                logger.warning("rollback of schema migration of %s failed: %s", where, exc)
        raise
    return found, SCHEMA_VERSION
