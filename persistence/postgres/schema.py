"""The PostgreSQL schema of crdt-sync and its migrations.

The version lives in a one-row ``schema_version`` table; a database without our tables
is version 0. :func:`migrate` runs in one transaction that first takes a
transaction-scoped advisory lock (:data:`MIGRATION_LOCK`), so several nodes starting
at once against one database serialise: the first creates the tables, the others
wait, then find them at the current version and do nothing. DDL is transactional in
PostgreSQL, so a migration that fails leaves the schema as it was.

Tables (every key carries the tenant ``org``; text keys use the ``"C"`` collation so
that comparisons and ``ORDER BY`` follow code points, like SQLite's ``BINARY``):

* ``documents``: one row per doc name ever touched, locked ``FOR UPDATE`` by every
  transaction that writes the doc (the writer's per-doc ordering). ``state`` is
  0 (a placeholder: never stored, the row only exists to be locked), 1 (stored) or
  2 (deleted); ``last_update_id`` is the doc's newest update id (0: none since it
  was created), the ``prev_update_id`` of its next append.
* ``updates``: the update log; ids come from the ``update_ids`` sequence, drawn after
  the doc's row lock is taken, so they grow per doc in commit order.
* ``snapshots``: compacted state plus the newest update id it covers.
* ``frame_seq``: each org's last sid, advanced in the transaction that logs frames
  (its row lock orders the org's frame-writing transactions across nodes).
* ``frames``, ``records``, ``mutations``: as in SQLite (JSON stored as text, byte for
  byte what :func:`persistence.values.dumps` made, so every node serves the same bytes).

To change the schema, append a list of statements to :data:`MIGRATIONS`; never edit a
released one.
"""

from __future__ import annotations

import logging

from psycopg import AsyncConnection

from persistence.postgres.versions_sql import MIGRATION as _V2
from persistence.store import StoreError

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SCHEMA_VERSION", "TABLES", "migrate"]

logger = logging.getLogger(__name__)

#: Key of the advisory lock held while migrating (any constant; it names the job).
MIGRATION_LOCK = 0x63726474_73796E63  # "crdtsync"

_V1 = [
    """
    CREATE TABLE documents (
        org text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        state smallint NOT NULL CHECK (state IN (0, 1, 2)),
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        last_update_id bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (org, name)
    )
    """,
    "CREATE SEQUENCE update_ids AS bigint",
    """
    CREATE TABLE updates (
        id bigint PRIMARY KEY,
        org text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        data bytea NOT NULL,
        actor text,
        at bigint NOT NULL,
        FOREIGN KEY (org, name) REFERENCES documents (org, name) ON DELETE CASCADE
    )
    """,
    "CREATE INDEX updates_doc ON updates (org, name, id)",
    """
    CREATE TABLE snapshots (
        org text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        data bytea NOT NULL,
        upto_update_id bigint NOT NULL,
        at bigint NOT NULL,
        PRIMARY KEY (org, name),
        FOREIGN KEY (org, name) REFERENCES documents (org, name) ON DELETE CASCADE
    )
    """,
    """
    CREATE TABLE frame_seq (
        org text COLLATE "C" NOT NULL PRIMARY KEY,
        last_sid bigint NOT NULL
    )
    """,
    """
    CREATE TABLE frames (
        org text COLLATE "C" NOT NULL,
        sid bigint NOT NULL,
        t text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        op text NOT NULL,
        p text NOT NULL,
        who text,
        at bigint NOT NULL,
        ctx text NOT NULL,
        PRIMARY KEY (org, sid)
    )
    """,
    "CREATE INDEX frames_org_t_sid ON frames (org, t, sid)",
    "CREATE INDEX frames_record ON frames (org, t, id, sid)",
    """
    CREATE TABLE records (
        org text COLLATE "C" NOT NULL,
        t text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        fields text NOT NULL,
        sid bigint NOT NULL,
        update_id bigint NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (org, t, id)
    )
    """,
    """
    CREATE TABLE mutations (
        org text COLLATE "C" NOT NULL,
        client_tx_id text COLLATE "C" NOT NULL,
        result text NOT NULL,
        at bigint NOT NULL,
        sid bigint,
        PRIMARY KEY (org, client_tx_id)
    )
    """,
]

#: Outgoing webhooks (see :mod:`persistence.outbox`).
_V3 = [
    """
    CREATE TABLE webhook_outbox (
        org text COLLATE "C" NOT NULL,
        sid bigint NOT NULL,
        t text COLLATE "C" NOT NULL,
        frame text NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (org, sid)
    )
    """,
    """
    CREATE TABLE webhook_cursors (
        endpoint text COLLATE "C" NOT NULL,
        org text COLLATE "C" NOT NULL,
        sid bigint NOT NULL,
        PRIMARY KEY (endpoint, org)
    )
    """,
    """
    CREATE TABLE webhook_deliveries (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        endpoint text COLLATE "C" NOT NULL,
        org text COLLATE "C" NOT NULL,
        first_sid bigint NOT NULL,
        last_sid bigint NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'parked')),
        attempts int NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        first_attempt_at bigint,
        next_attempt_at bigint NOT NULL,
        lease_owner text,
        lease_expires bigint NOT NULL DEFAULT 0,
        last_error text,
        last_status int,
        UNIQUE (endpoint, org, first_sid)
    )
    """,
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, status, next_attempt_at)",
]

#: Webhooks throttled per record: the outbox names each frame's record, and
#: ``webhook_throttle`` holds when an endpoint last sent each record.
_V4 = [
    "ALTER TABLE webhook_outbox ADD COLUMN rid text COLLATE \"C\" NOT NULL DEFAULT ''",
    "UPDATE webhook_outbox SET rid = frame::json->>'id'",
    """
    CREATE TABLE webhook_throttle (
        endpoint text COLLATE "C" NOT NULL,
        org text COLLATE "C" NOT NULL,
        t text COLLATE "C" NOT NULL,
        rid text COLLATE "C" NOT NULL,
        sent_at bigint NOT NULL,
        PRIMARY KEY (endpoint, org, t, rid)
    )
    """,
]

#: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: list[list[str]] = [_V1, _V2, _V3, _V4]
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = frozenset(
    {
        "documents",
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


async def _existing_tables(conn: AsyncConnection) -> set[str]:
    # to_regclass resolves through search_path, as the unqualified names below do.
    cur = await conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
        [sorted(TABLES)],
    )
    return {row[0] for row in await cur.fetchall()}


async def migrate(conn: AsyncConnection, where: str = "database") -> tuple[int, int]:
    """Create or upgrade the schema in one transaction, under :data:`MIGRATION_LOCK`.

    Idempotent, and safe when several processes call it at once on one database.

    Args:
        conn: A connection in autocommit mode (the transaction is opened here).
        where: How to name the database in error messages.

    Returns:
        ``(version found, version now)``.

    Raises:
        StoreError: the schema holds some of our tables but no ``schema_version``, or
            a version newer than this code knows.
        psycopg.Error: PostgreSQL failed (the transaction is rolled back).
    """
    async with conn.transaction():
        # Before anything else: two concurrent CREATE TABLE IF NOT EXISTS can still
        # collide in the catalog; under the lock only one process creates tables.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        tables = await _existing_tables(conn)
        if "schema_version" in tables:
            cur = await conn.execute("SELECT max(version) FROM schema_version")
            row = await cur.fetchone()
            found = int(row[0] or 0) if row is not None else 0
        elif tables:
            raise StoreError(
                f"{where} is not a crdt-sync database "
                f"(it has tables {sorted(tables)} but no schema_version)"
            )
        else:
            found = 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{where} has schema version {found}, newer than this crdt-sync "
                f"supports ({SCHEMA_VERSION}); upgrade crdt-sync"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)  # type: ignore[arg-type]
        if found < SCHEMA_VERSION:
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", [SCHEMA_VERSION])
    return found, SCHEMA_VERSION
