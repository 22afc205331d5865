"""rooms.supervisor: loops restarted with backoff, per-room tasks isolated, every failure
logged and counted; cancellation is never a failure."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Map

from persistence import SQLiteStore
from rooms.manager import RoomManager
from rooms.supervisor import Supervisor

pytestmark = pytest.mark.anyio

TIMEOUT = 5


async def until(predicate) -> None:
    with anyio.fail_after(TIMEOUT):
        while not predicate():
            await anyio.sleep(0.001)


async def test_failing_loop_is_restarted_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(min_backoff=0, max_backoff=0)
    runs = 0
    running = anyio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"run {runs} failed")
        running.set()
        await anyio.sleep_forever()

    with caplog.at_level(logging.ERROR, logger="rooms.supervisor"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.loop, "flaky", flaky)
            with anyio.fail_after(TIMEOUT):
                await running.wait()
            assert supervisor.failures["flaky"] == 2
            assert supervisor.loops["flaky"].restarts == 2
            assert supervisor.loops["flaky"].running
            assert supervisor.problems() == {}
            tg.cancel_scope.cancel()
    # Cancelled: stopped, and not counted as a failure.
    assert supervisor.failures["flaky"] == 2
    assert not supervisor.loops["flaky"].running
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "task flaky failed (failure 1), restarting in 0.00 s",
        "task flaky failed (failure 2), restarting in 0.00 s",
    ]
    assert "run 2 failed" in caplog.text  # with its traceback


async def test_a_loop_waiting_to_restart_is_reported_and_backs_off() -> None:
    supervisor = Supervisor(min_backoff=60, max_backoff=120)

    async def broken() -> None:
        raise ValueError("boom")

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervisor.loop, "broken", broken)
        await until(lambda: supervisor.failures["broken"] == 1)
        assert supervisor.problems() == {"broken": "restarting after: ValueError: boom"}
        tg.cancel_scope.cancel()


async def test_a_loop_that_returns_is_reported_stopped() -> None:
    supervisor = Supervisor()

    async def done() -> None:
        return None

    await supervisor.loop("quits", done)
    assert supervisor.problems() == {"quits": "stopped"}


async def test_a_pycrdt_panic_is_a_failure_not_an_exit() -> None:
    supervisor = Supervisor()

    async def panics() -> None:
        Doc().get("m", type=Map)["x"] = "\ud800"  # pyo3 PanicException (a BaseException)

    assert await supervisor.task("compact", "room='x'", panics) is False
    assert supervisor.failures["compact"] == 1


async def test_a_failing_room_task_is_counted_and_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SQLiteStore(tmp_path / "db.sqlite", commit_interval_ms=0) as store:
        supervisor = Supervisor()
        async with RoomManager(store, supervisor=supervisor) as manager:
            finished = anyio.Event()

            async def fails() -> None:
                raise RuntimeError("compaction bug")

            async def works() -> None:
                finished.set()

            manager.spawn("compact 'doc/a'", fails)
            manager.spawn("unload 'doc/b'", works)
            with anyio.fail_after(TIMEOUT):
                await finished.wait()
            await until(lambda: supervisor.failures["compact"] == 1)
            assert supervisor.loops["liveness"].running
            assert supervisor.problems() == {}
    assert "compact 'doc/a' failed (task=compact)" in caplog.text
