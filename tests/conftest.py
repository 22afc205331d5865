from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import ServerProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``crdt-sync serve`` on a free port with its own database."""
    with ServerProcess(tmp_path) as proc:
        yield proc


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with extra flags: ``server_factory("--room-idle-seconds", "1")``."""
    started: list[ServerProcess] = []

    def start(*args: str, db: Path | None = None, env: dict | None = None) -> ServerProcess:
        proc = ServerProcess(tmp_path, *args, db=db, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.__exit__(None, None, None)  # stops it if running; closes its pipes either way


@pytest.fixture(autouse=True, scope="module")
def _collect_what_the_module_leaked() -> Iterator[None]:
    """Collect garbage at the end of each test module.

    A socket or transport a test leaves unclosed warns (an error here) only when the
    garbage collector reaches it, which may be during any later test of the worker
    (seen in CI: a pure parsing test failed on two transports an earlier file left).
    Collected here, the warning names the module that leaked it.
    """
    yield
    gc.collect()

