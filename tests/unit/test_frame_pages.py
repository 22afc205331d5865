"""Pages of the frame log (crdt_sync.records.pages) never end inside a mutation
request's frames, on a real (in-memory) store."""

from __future__ import annotations

import anyio
import pytest

from crdt_sync.records.pages import read_page
from persistence.memory import MemoryStore
from persistence.store import FrameBatch
from rooms.frame_waiters import FrameWaiters, TooManyWaiters
from tests.frame_drafts import frame_draft

pytestmark = pytest.mark.anyio

ORG = "default"


def draft(i: int, tx: str | None = None, t: str = "task"):
    ctx = {"client_tx_id": None} | ({"tx": tx} if tx else {})
    return frame_draft(t, str(i), "i", {"n": i}, who="a", at=i, ctx=ctx)


async def sids(store: MemoryStore, since: int, limit: int) -> list[int]:
    page = await read_page(store, ORG, since, limit=limit, t=None, reach=10)
    return [f.sid for f in page.frames]


async def test_a_page_that_ends_inside_a_request_reads_on_to_its_last_frame() -> None:
    async with MemoryStore() as store:
        store.log_frames(ORG, FrameBatch((draft(1),)))
        store.log_frames(ORG, FrameBatch((draft(2, "a"), draft(3), draft(4, "a"))))
        await store.log_frames(ORG, FrameBatch((draft(5, "b"), draft(6))))
        page = await read_page(store, ORG, 0, limit=2, t=None, reach=10)
        assert [f.sid for f in page.frames] == [1, 2, 3, 4] and page.more
        # Cut at a frame without tx, or at a request's last frame: as asked.
        assert [
            f.sid for f in (await read_page(store, ORG, 0, limit=1, t=None, reach=10)).frames
        ] == [1]
        assert [
            f.sid for f in (await read_page(store, ORG, 1, limit=3, t=None, reach=10)).frames
        ] == [2, 3, 4]
        # A request of one frame at the end of the page stays as it is.
        tail = await read_page(store, ORG, 4, limit=1, t=None, reach=10)
        assert [f.sid for f in tail.frames] == [5] and tail.more
        last = await read_page(store, ORG, 5, limit=10, t=None, reach=10)
        assert [f.sid for f in last.frames] == [6] and not last.more and last.newest == 6


async def test_frame_waiters_wake_at_the_orgs_next_commit_and_at_close() -> None:
    waiters = FrameWaiters(limit=1)
    other = waiters.changed("other")
    mine = waiters.changed(ORG)
    assert waiters.changed(ORG) is mine  # one event per org until it is set
    waiters.publish([])
    assert not mine.is_set()
    async with MemoryStore() as store:
        frames = await store.log_frames(ORG, FrameBatch((draft(1),)))
    waiters.publish(frames)
    assert mine.is_set() and not other.is_set()
    assert waiters.changed(ORG) is not mine  # the next wait waits for the next commit
    waiters.acquire()
    with pytest.raises(TooManyWaiters):
        waiters.acquire()
    waiters.release()
    waiters.close()
    assert other.is_set() and waiters.changed("late").is_set()
    with anyio.fail_after(1):
        await other.wait()
