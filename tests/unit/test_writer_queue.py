"""The SQLite writer queue is bounded: past ``max_queued_bytes`` writers wait, in call
order, instead of the queue growing. The writer thread is held inside a real
``run_in_writer`` call (a slow disk), never mocked."""

from __future__ import annotations

import threading

import anyio
import pytest

from persistence.sqlite import SQLiteStore
from persistence.sqlite.writer import OP_OVERHEAD
from persistence.store import FrameBatch, FrameDraft

pytestmark = pytest.mark.anyio

ORG = "default"
TIMEOUT = 10


async def until(condition) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():
            await anyio.sleep(0.005)


async def held_writer(store: SQLiteStore, release: threading.Event, tg) -> None:
    """Occupy the writer thread until ``release`` is set."""
    entered = anyio.Event()
    token = anyio.lowlevel.current_token()

    def hold(conn) -> None:
        anyio.from_thread.run_sync(entered.set, token=token)
        release.wait(TIMEOUT)

    tg.start_soon(store.run_in_writer, hold)
    await entered.wait()


async def test_appends_wait_for_room_instead_of_growing_the_queue(tmp_path) -> None:
    bound = 20 * (1000 + OP_OVERHEAD)
    release = threading.Event()
    async with SQLiteStore(tmp_path / "db", max_queued_bytes=bound) as store:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                await held_writer(store, release, tg)
                returned: list[int] = []
                ids: dict[int, int] = {}

                async def writer(i: int) -> None:
                    appended = await store.append(ORG, "doc", b"x" * 1000, actor="a", at=i)
                    returned.append(i)
                    ids[i] = (await appended.durable).update_id

                for i in range(100):
                    tg.start_soon(writer, i)
                await until(lambda: store.stats().queued >= 100)  # every writer has its place
                assert store.stats().queued_bytes <= bound + OP_OVERHEAD
                assert len(returned) < 25, "writers past the bound must wait"
                release.set()
        assert returned == list(range(100)), "admitted in call order"
        assert [ids[i] for i in range(100)] == list(range(1, 101)), "committed in call order"
        assert store.stats().queued_bytes == 0 and store.stats().queued == 0
        stored = await store.load(ORG, "doc")
        assert stored is not None and len(stored.updates) == 100


async def test_frames_logged_behind_waiting_writes_keep_the_call_order(tmp_path) -> None:
    release = threading.Event()
    async with SQLiteStore(tmp_path / "db", max_queued_bytes=4000) as store:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                await held_writer(store, release, tg)
                order: list[str] = []

                async def append(i: int) -> None:
                    appended = await store.append(ORG, "t/1", b"x" * 3000, actor="a", at=i)
                    await appended.durable
                    order.append(f"u{i}")

                async def frames(i: int) -> None:
                    draft = FrameDraft(
                        t="t",
                        id="1",
                        op="u",
                        p={"i": i},
                        who="a",
                        at=i,
                        ctx={},
                        record={"i": i},
                    )
                    await store.log_frames(ORG, FrameBatch((draft,), None))
                    order.append(f"f{i}")

                queued = store.stats().queued
                for i in range(3):  # each takes its place in line before the next starts
                    tg.start_soon(append, i)
                    queued += 1
                    await until(lambda n=queued: store.stats().queued == n)
                    tg.start_soon(frames, i)
                    queued += 1
                    await until(lambda n=queued: store.stats().queued == n)
                release.set()
        assert order == ["u0", "f0", "u1", "f1", "u2", "f2"]


async def test_an_atomic_group_is_one_transaction_past_max_batch_and_behind_waiting_writes(
    tmp_path,
) -> None:
    """A group bigger than ``max_batch``, queued while the queue is full, is still
    committed in one transaction, after the writes queued before it."""

    def draft(t: str, i: int) -> FrameDraft:
        p = {"i": i}
        return FrameDraft(t=t, id=str(i), op="i", p=p, who="a", at=i, ctx={}, record=p)

    bound = 600  # fewer than the 8 earlier ops fit: the others wait in the backlog
    release = threading.Event()
    store = SQLiteStore(tmp_path / "db", max_queued_bytes=bound, max_batch=2)
    async with store:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                await held_writer(store, release, tg)
                early = [draft("early", i) for i in range(8)]
                earlier = [store.log_frames(ORG, FrameBatch((d,))) for d in early]
                assert store.stats().queued_bytes <= bound
                await until(lambda: store.stats().queued >= 8)
                with store.atomic():
                    group = [
                        store.log_frames(ORG, FrameBatch((draft("group", i),))) for i in range(5)
                    ]
                    assert store.stats().queued == 8  # held back until the block exits
                release.set()
            frames = [f for commit in group for f in await commit]
            sids = [f.sid for f in frames]
            assert sids == list(range(sids[0], sids[0] + 5))
            assert max(f.sid for c in earlier for f in c.result()) < sids[0]
            # Every group op settled in one commit: the batch that held them all.
            # The last commit held the whole group (max_batch is 2).
            assert store.stats().last_batch_size >= 5  # (with an earlier op, or alone)
            page = await store.read_frames(ORG, 0, limit=100)
            assert [f.t for f in page.frames] == ["early"] * 8 + ["group"] * 5
