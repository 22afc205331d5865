"""The store backends a test can run against: ``memory``, ``sqlite`` and ``postgres``.

:func:`open_store` starts one, empty, and closes it afterwards. PostgreSQL gets a
fresh database per store (``CREATE DATABASE`` costs well under a second), created on
the server at :data:`POSTGRES_ADMIN_URL` (the shared one at 127.0.0.1:5432, user
``postgres``) by :class:`PostgresDatabases` under a name unique to the test run, and
dropped when the store is closed; whatever a crash left behind is dropped at the end
of the run. :func:`throwaway_database` is the one helper that creates and drops a
database, for every test and benchmark that needs PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from persistence.memory import MemoryStore
from persistence.sqlite import SQLiteStore
from persistence.store import Store

BACKENDS = ("memory", "sqlite", "postgres")

#: Where throwaway databases are created: the URL of a superuser's connection to the
#: machine's PostgreSQL (its database is only used to create and drop others).
POSTGRES_ADMIN_URL = os.environ.get(
    "CRDT_SYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_store_class() -> type:
    """``persistence.postgres.PostgresStore`` (never skipped: CI starts PostgreSQL)."""
    from persistence.postgres import PostgresStore

    return PostgresStore


def database_url(name: str) -> str:
    """The URL of database ``name`` on the server of :data:`POSTGRES_ADMIN_URL`."""
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def admin_connection():  # type: ignore[no-untyped-def]
    """A new autocommit ``psycopg.Connection`` to :data:`POSTGRES_ADMIN_URL`."""
    import psycopg  # only runs that use PostgreSQL need it

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=10)


@contextmanager
def throwaway_database(prefix: str = "crdt_sync_test") -> Iterator[str]:
    """Create a database named ``<prefix>_<pid>_<random>``; yield its URL; drop it
    afterwards, even if it is in use or refuses connections.

    Raises:
        RuntimeError: PostgreSQL cannot be reached (a failure, never a skip: CI starts
            it, and a skip would hide a broken setup).
    """
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    try:
        with admin_connection() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (start it, see .ci/run): {exc}"
        ) from exc
    try:
        yield database_url(name)
    finally:
        with admin_connection() as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresDatabases:
    """Throwaway databases of one test run (:func:`throwaway_database` under a prefix
    of the run's own, so that :meth:`drop_leftovers` finds whatever a crash left)."""

    def __init__(self) -> None:
        self._prefix = f"crdt_sync_test_{uuid.uuid4().hex[:12]}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for the block; yields its URL, drops it afterwards."""
        with throwaway_database(self._prefix) as url:
            yield url

    def drop_leftovers(self) -> None:
        with admin_connection() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (self._prefix + "\\_%",),
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def open_store(
    backend: str, tmp_path: Path, postgres: PostgresDatabases | None = None, **options: Any
) -> AsyncIterator[Store]:
    """A started, empty store of ``backend``; closed (and its data dropped) afterwards.

    The test may close it itself (close is idempotent). ``options`` go to the store's
    constructor (``outbox=True``).
    """
    store: Store
    with _backing(backend, tmp_path, postgres, options) as store:
        await store.start()
        try:
            yield store
        finally:
            await store.close()


@contextmanager
def _backing(
    backend: str,
    tmp_path: Path,
    postgres: PostgresDatabases | None,
    options: dict[str, Any] | None = None,
) -> Iterator[Store]:
    options = options or {}
    if backend == "memory":
        yield MemoryStore(**options)
    elif backend == "sqlite":
        yield SQLiteStore(tmp_path / "store.db", **options)
    elif backend == "postgres":
        cls = postgres_store_class()
        assert postgres is not None, "the postgres backend needs PostgresDatabases"
        with postgres.database() as dsn:
            yield cls(dsn, **options)
    else:
        raise ValueError(f"unknown store backend {backend!r}; known: {BACKENDS}")
