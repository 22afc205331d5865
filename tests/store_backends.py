"""The store backends a test can run against: ``memory``, ``sqlite`` and ``postgres``.

:func:`open_store` starts one, empty, and closes it afterwards. PostgreSQL gets a
fresh database per store (``CREATE DATABASE`` costs well under a second), created on
the server at :data:`POSTGRES_ADMIN_DSN` (the shared one at 127.0.0.1:5432, user
``postgres``) by :class:`PostgresDatabases` under a name unique to the test run, and
dropped when the store is closed; whatever a crash left behind is dropped at the end
of the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from persistence.memory import MemoryStore
from persistence.sqlite import SQLiteStore
from persistence.store import Store

BACKENDS = ("memory", "sqlite", "postgres")

#: Where throwaway databases are created (libpq connection string of a superuser).
POSTGRES_ADMIN_DSN = os.environ.get(
    "CRDT_SYNC_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def postgres_store_class() -> type:
    """``persistence.postgres.PostgresStore`` (never skipped: CI starts PostgreSQL)."""
    from persistence.postgres import PostgresStore

    return PostgresStore


class PostgresDatabases:
    """Creates and drops throwaway databases named ``crdt_sync_test_<run>_<n>``."""

    def __init__(self, admin_dsn: str = POSTGRES_ADMIN_DSN) -> None:
        import psycopg  # only runs that use PostgreSQL need it
        from psycopg.conninfo import make_conninfo

        self._psycopg = psycopg
        self._admin_dsn = admin_dsn
        self._make_conninfo = make_conninfo
        self._prefix = f"crdt_sync_test_{uuid.uuid4().hex[:12]}"
        self._count = 0

    def _admin(self):  # type: ignore[no-untyped-def]
        return self._psycopg.connect(self._admin_dsn, autocommit=True, connect_timeout=10)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for the block; yields its DSN, drops it afterwards."""
        self._count += 1
        name = f"{self._prefix}_{self._count}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self._make_conninfo(self._admin_dsn, dbname=name)
        finally:
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_leftovers(self) -> None:
        with self._admin() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (self._prefix + "\\_%",),
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def open_store(
    backend: str, tmp_path: Path, postgres: PostgresDatabases | None = None
) -> AsyncIterator[Store]:
    """A started, empty store of ``backend``; closed (and its data dropped) afterwards.

    The test may close it itself (close is idempotent).
    """
    store: Store
    with _backing(backend, tmp_path, postgres) as store:
        await store.start()
        try:
            yield store
        finally:
            await store.close()


@contextmanager
def _backing(backend: str, tmp_path: Path, postgres: PostgresDatabases | None) -> Iterator[Store]:
    if backend == "memory":
        yield MemoryStore()
    elif backend == "sqlite":
        yield SQLiteStore(tmp_path / "store.db")
    elif backend == "postgres":
        cls = postgres_store_class()
        assert postgres is not None, "the postgres backend needs PostgresDatabases"
        with postgres.database() as dsn:
            yield cls(dsn)
    else:
        raise ValueError(f"unknown store backend {backend!r}; known: {BACKENDS}")
