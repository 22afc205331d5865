"""Fixtures of the store suites that run on every backend (contract, versions, outbox).

``backend`` is parametrized over ``memory``, ``sqlite`` and ``postgres``
(tests/store_backends.py); a module asks for it, or for ``store``, to run each of its
tests once per backend. A module's own ``store`` fixture (e.g. one with the outbox on)
overrides the one here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from persistence.store import Store
from tests.store_backends import BACKENDS, PostgresDatabases, open_store, postgres_store_class


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_leftovers()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, PostgresDatabases | None]:
    if request.param != "postgres":
        return request.param, None
    postgres_store_class()  # skips while the backend does not exist
    return request.param, request.getfixturevalue("postgres_databases")


@pytest.fixture
async def store(
    backend: tuple[str, PostgresDatabases | None], tmp_path: Path
) -> AsyncIterator[Store]:
    name, postgres = backend
    async with open_store(name, tmp_path, postgres) as s:
        yield s
