"""The awaitables the store hands out (``Appended.durable``, ``log_frames``, flush,
compact, delete) are not cancelled by a cancelled awaiter: the writer commits the
write all the same, so the done-callbacks must see its outcome, not ``cancelled()``
(a failed commit would go unreported, an idempotency key would be released early)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from pycrdt import Doc, Map, merge_updates

from persistence import SQLiteStore, StoreWriteError
from persistence.store import Committed, Frame, FrameBatch, FrameDraft

pytestmark = pytest.mark.anyio

TIMEOUT = 10  # seconds
ORG = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db") as s:
        yield s


def draft(t: str, id: str, op: str = "i") -> FrameDraft:
    p = {"title": f"{t}/{id}"}
    return FrameDraft(
        t=t, id=id, op=op, p=p, who="alice", at=1000, ctx={}, record=None if op == "d" else p
    )


def yupdate(title: str) -> bytes:
    doc = Doc(client_id=1)
    doc.get("fields", type=Map)["title"] = title
    return doc.get_update()


@asynccontextmanager
async def held_writer(store: SQLiteStore) -> AsyncIterator[Callable[[], None]]:
    """Keep the writer thread busy between two transactions until the yielded function
    is called (or the block ends): what is queued meanwhile stays uncommitted."""
    release = threading.Event()
    holding = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        holding.set()
        release.wait(TIMEOUT)

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.run_in_writer, hold)
        assert await anyio.to_thread.run_sync(holding.wait, TIMEOUT), "writer not reached"
        try:
            yield release.set
        finally:
            release.set()


async def abandon_awaiter(commit: Awaitable[Any]) -> None:
    """A task awaits ``commit`` and is cancelled while it waits (a client gone)."""
    outcome: list[str] = []

    async def waiter() -> None:
        try:
            await commit
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]


async def callbacks_ran() -> None:
    """A future's done-callbacks run on the loop's next iteration, not at its await
    (awaiting a future that is already done returns at once)."""
    await asyncio.sleep(0)


def observe(commit: Any) -> list[Any]:
    """What the done-callbacks of ``commit`` see, as rooms/ and the record feed look at it."""
    seen: list[Any] = []

    def done(fut: Any) -> None:
        if fut.cancelled():
            seen.append("cancelled")
        elif fut.exception() is not None:
            seen.append(fut.exception())
        else:
            seen.append(sids(fut.result()))

    commit.add_done_callback(done)
    return seen


def sids(result: Committed | list[Frame]) -> list[int]:
    """The sids a commit returned (an append's :class:`Committed`, or log_frames')."""
    frames = result.frames if isinstance(result, Committed) else result
    return [f.sid for f in frames]


async def test_a_cancelled_awaiter_does_not_cancel_an_appends_durable(
    store: SQLiteStore,
) -> None:
    update = yupdate("x")
    with anyio.fail_after(TIMEOUT):
        async with held_writer(store) as release:
            appended = await store.append(
                ORG, "a/1", update, actor="a", at=1, frames=FrameBatch((draft("a", "1"),))
            )
            seen = observe(appended.durable)
            await abandon_awaiter(appended.durable)
            assert not appended.durable.done()  # type: ignore[attr-defined]
            assert seen == []
            release()
        committed = await appended.durable  # somebody else still gets the outcome
        assert sids(committed) == [1] and committed.update_id == 1
        await callbacks_ran()
        assert seen == [[1]]
        stored = await store.load(ORG, "a/1")
        assert stored is not None and stored.updates == [update]
        assert [f.sid for f in (await store.read_frames(ORG, 0)).frames] == [1]


async def test_a_cancelled_awaiter_does_not_cancel_log_frames(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        async with held_writer(store) as release:
            commit = store.log_frames(
                ORG, FrameBatch((draft("a", "1"), draft("b", "1")), ("tx-1", {"ok": True}))
            )
            seen = observe(commit)
            await abandon_awaiter(commit)
            await abandon_awaiter(commit)  # twice: each awaiter is on its own
            assert not commit.done()
            release()
        assert sids(await commit) == [1, 2]
        assert sids(await commit) == [1, 2]
        await callbacks_ran()
        assert seen == [[1, 2]]
        assert [f.sid for f in (await store.read_frames(ORG, 0)).frames] == [1, 2]
        assert await store.get_mutation(ORG, "tx-1") == {"ok": True, "sid": 2}


async def test_nobody_but_the_writer_settles_a_commit(store: SQLiteStore) -> None:
    """Neither ``cancel()`` nor a cancelled ``gather`` marks a queued write cancelled."""
    with anyio.fail_after(TIMEOUT):
        async with held_writer(store) as release:
            commit = store.log_frames(ORG, FrameBatch((draft("a", "1"),)))
            seen = observe(commit)
            assert commit.cancel() is False  # type: ignore[attr-defined]
            gathered = asyncio.gather(commit)
            gathered.cancel()
            assert not commit.cancelled()  # type: ignore[attr-defined]
            release()
        assert sids(await commit) == [1]
        await callbacks_ran()
        assert seen == [[1]]


async def test_cancelled_awaiters_of_flush_compact_and_delete_leave_the_writes_running(
    store: SQLiteStore,
) -> None:
    with anyio.fail_after(TIMEOUT):
        appended = await store.append(ORG, "a/1", yupdate("x"), actor="a", at=1)
        await appended.durable
        async with held_writer(store) as release:
            await abandon_awaiter(store.compact(ORG, "a/1", yupdate("y")))
            await abandon_awaiter(store.delete(ORG, "b/1"))
            await abandon_awaiter(store.flush())
            release()
        await store.flush()
        stored = await store.load(ORG, "a/1")
        assert stored is not None and stored.updates == []
        assert stored.snapshot == merge_updates(yupdate("y"), yupdate("x"))


@pytest.mark.parametrize("via", ["append", "log_frames"])
async def test_a_failing_commit_reaches_the_callbacks_after_its_awaiter_is_cancelled(
    store: SQLiteStore, via: str
) -> None:
    def refuse(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON frames WHEN NEW.t = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom frames are refused'); END"
        )

    with anyio.fail_after(TIMEOUT):
        await store.run_in_writer(refuse)
        async with held_writer(store) as release:
            batch = FrameBatch((draft("boom", "1"),), ("tx-boom", {"ok": True}))
            if via == "append":
                appended = await store.append(
                    ORG, "boom/1", yupdate("x"), actor="a", at=1, frames=batch
                )
                commit: Any = appended.durable
            else:
                commit = store.log_frames(ORG, batch)
            seen = observe(commit)
            await abandon_awaiter(commit)
            release()
        with pytest.raises(StoreWriteError, match="boom frames are refused"):
            await commit
        assert len(seen) == 1 and isinstance(seen[0], StoreWriteError)
        assert await store.get_mutation(ORG, "tx-boom") is None
        if via == "append":
            with pytest.raises(StoreWriteError):
                await store.flush()  # the failed append is reported once more, here
