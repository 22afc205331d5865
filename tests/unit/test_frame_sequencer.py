"""FrameSequencer: each org's frames in sid order, each once, gaps read from the store;
LocalFrameBus through it."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persistence.store import Frame
from rooms.frame_bus import LocalFrameBus
from rooms.frame_sequencer import FrameSequencer

pytestmark = pytest.mark.anyio

TIMEOUT = 5
GAP = 0.01


def frame(sid: int, org: str = "o") -> Frame:
    return Frame(sid=sid, org=org, t="task", id=str(sid), op="u", p={}, who=None, at=sid)


class FakeStore:
    """The committed frame log; ``read_since`` as the sequencer calls it."""

    def __init__(self, sids: range | list[int] = (), *, page: int | None = None) -> None:
        self.frames: dict[str, list[Frame]] = {}
        for sid in sids:
            self.commit(frame(sid))
        self.page = page
        self.reads: list[tuple[str, int]] = []
        self.failures = 0

    def commit(self, f: Frame) -> Frame:
        self.frames.setdefault(f.org, []).append(f)
        self.frames[f.org].sort(key=lambda x: x.sid)
        return f

    async def read_since(self, org: str, sid: int) -> list[Frame]:
        self.reads.append((org, sid))
        if self.failures:
            self.failures -= 1
            raise OSError("store down")
        out = [f for f in self.frames.get(org, []) if f.sid > sid]
        return out[: self.page] if self.page else out


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Frame]] = []
        self.changed = asyncio.Event()

    def __call__(self, frames: list[Frame]) -> None:
        self.batches.append(frames)
        self.changed.set()

    def sids(self, org: str = "o") -> list[int]:
        return [f.sid for batch in self.batches for f in batch if f.org == org]

    async def until(self, sids: list[int], org: str = "o") -> None:
        with anyio.fail_after(TIMEOUT):
            while self.sids(org)[-len(sids) :] != sids or len(self.sids(org)) < len(sids):
                self.changed.clear()
                await self.changed.wait()


def make(store: FakeStore, **kw) -> tuple[FrameSequencer, Recorder]:
    rec = Recorder()
    return FrameSequencer(store.read_since, rec, gap_wait=kw.pop("gap_wait", GAP), **kw), rec


async def test_in_order_frames_pass_straight_through() -> None:
    store = FakeStore(range(1, 4))
    seq, rec = make(store)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(2), frame(3)])
    assert rec.batches == [[frame(1)], [frame(2), frame(3)]]  # synchronously
    await seq.close()
    assert store.reads == []


async def test_out_of_order_frames_are_reordered_without_a_store_read() -> None:
    store = FakeStore()
    seq, rec = make(store, gap_wait=TIMEOUT)  # the gap closes long before a read
    seq.push("o", [frame(1)])
    seq.push("o", [frame(3), frame(4)])
    assert rec.sids() == [1]
    seq.push("o", [frame(2)])
    assert rec.sids() == [1, 2, 3, 4]
    await seq.close()
    assert store.reads == []


async def test_duplicates_are_dropped() -> None:
    seq, rec = make(FakeStore())
    seq.push("o", [frame(1), frame(2)])
    seq.push("o", [frame(2), frame(1)])
    seq.push("o", [frame(4)])
    seq.push("o", [frame(4)])
    seq.push("o", [frame(3), frame(4)])
    assert rec.sids() == [1, 2, 3, 4]
    assert seq.duplicates == 4
    await seq.close()


async def test_a_gap_is_read_from_the_store() -> None:
    store = FakeStore(range(1, 6))
    seq, rec = make(store)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(4)])  # 2 and 3 were lost
    await rec.until([1, 2, 3, 4, 5])  # 5 came with the read, committed meanwhile
    assert store.reads[0] == ("o", 1)
    seq.push("o", [frame(5)])  # and is a duplicate when its message arrives
    assert rec.sids() == [1, 2, 3, 4, 5]
    await seq.close()


async def test_a_paged_store_is_read_until_the_gap_closes() -> None:
    store = FakeStore(range(1, 11), page=2)
    seq, rec = make(store)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(10)])
    await rec.until(list(range(1, 11)))
    assert [sid for _, sid in store.reads] == [1, 3, 5, 7]  # 10 was buffered
    await seq.close()


async def test_a_failing_store_is_retried() -> None:
    store = FakeStore(range(1, 4))
    store.failures = 2
    seq, rec = make(store)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(3)])
    await rec.until([1, 2, 3])
    assert len(store.reads) == 3
    await seq.close()


async def test_a_gap_the_store_cannot_fill_is_skipped_after_max_reads() -> None:
    store = FakeStore([1, 4, 5])  # 2 and 3 were never committed (or trimmed)
    seq, rec = make(store, max_reads=3)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(4)])
    await rec.until([1, 4, 5])
    assert len(store.reads) == 3
    assert seq.skipped == 2
    await seq.close()


async def test_frames_the_store_does_not_hold_are_dropped() -> None:
    store = FakeStore([1, 2])
    seq, rec = make(store, max_reads=2)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(10**12)])  # a broken (or forged) message
    with anyio.fail_after(TIMEOUT):
        while seq.unconfirmed == 0:
            await asyncio.sleep(GAP)
    assert rec.sids() == [1, 2]  # 2 came with the first read
    store.commit(frame(3))
    seq.push("o", [frame(3)])  # and the feed goes on
    assert rec.sids() == [1, 2, 3]
    assert seq.unconfirmed == 1 and seq.skipped == 0
    await seq.close()


async def test_the_first_frames_set_the_starting_point() -> None:
    store = FakeStore(range(1, 10))
    seq, rec = make(store)
    seq.push("o", [frame(5), frame(6)])
    seq.push("o", [frame(3)])  # before the start: the subscriber read it itself
    assert rec.sids() == [5, 6]
    await seq.close()
    assert store.reads == []


async def test_follow_sets_the_starting_point() -> None:
    store = FakeStore(range(1, 10))
    seq, rec = make(store)
    seq.follow("o", 4)
    seq.push("o", [frame(7)])
    await rec.until([5, 6, 7, 8, 9])
    assert rec.sids() == [5, 6, 7, 8, 9]
    seq.follow("o", 2)  # known org: no effect
    assert seq.last_delivered("o") == 9
    await seq.close()


async def test_resync_reads_what_no_frame_showed_missing() -> None:
    store = FakeStore(range(1, 3), page=2)
    seq, rec = make(store)
    seq.push("o", [frame(1), frame(2)])
    for sid in range(3, 8):  # committed elsewhere while the bus was down
        store.commit(frame(sid))
    seq.resync(None)
    await rec.until([3, 4, 5, 6, 7])
    assert [sid for _, sid in store.reads] == [2, 4, 6, 7]  # until nothing newer
    await seq.close()


async def test_resync_of_an_unknown_org_reads_nothing() -> None:
    store = FakeStore(range(1, 3))
    seq, _ = make(store)
    seq.resync("o")
    seq.resync(None)
    await asyncio.sleep(GAP * 5)
    assert store.reads == []
    await seq.close()


async def test_orgs_are_sequenced_independently() -> None:
    store = FakeStore()
    for sid in (1, 2, 3):
        store.commit(frame(sid, "b"))
    seq, rec = make(store, gap_wait=TIMEOUT)
    seq.push("a", [frame(1, "a")])
    seq.push("b", [frame(1, "b")])
    seq.push("b", [frame(3, "b")])  # b has a gap; a does not wait for it
    seq.push("a", [frame(2, "a")])
    assert rec.sids("a") == [1, 2]
    assert rec.sids("b") == [1]
    seq.resync("b")
    await rec.until([1, 2, 3], "b")
    assert all(len({f.org for f in batch}) == 1 for batch in rec.batches)
    await seq.close()


async def test_a_failing_subscriber_does_not_stop_delivery() -> None:
    store = FakeStore()
    seen: list[int] = []

    def deliver(frames: list[Frame]) -> None:
        seen.extend(f.sid for f in frames)
        if frames[0].sid == 1:
            raise RuntimeError("boom")

    seq = FrameSequencer(store.read_since, deliver, gap_wait=GAP)
    seq.push("o", [frame(1)])
    seq.push("o", [frame(2)])
    assert seen == [1, 2]
    await seq.close()


@given(
    st.integers(min_value=2, max_value=30).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.integers(min_value=2, max_value=n), max_size=3 * n),
            st.integers(min_value=1, max_value=5),
        )
    )
)
@settings(max_examples=60, deadline=None)
def test_any_arrival_order_delivers_each_frame_once_in_order(case) -> None:
    """Frame 1 first (the starting point), then any mix of arrivals (reordered, dupes,
    losses), then the last frame: every frame once, in order, whatever the store page."""
    n, arrivals, page = case

    async def run() -> list[int]:
        store = FakeStore(range(1, n + 1), page=page)
        seq, rec = make(store, gap_wait=0.001)
        seq.push("o", [frame(1)])
        for sid in arrivals:
            seq.push("o", [frame(sid)])
            if sid % 3:  # let some gap reads run between arrivals
                await asyncio.sleep(0)
        seq.push("o", [frame(n)])
        await rec.until(list(range(1, n + 1)))
        await seq.close()
        return rec.sids()

    assert asyncio.run(run()) == list(range(1, n + 1))


async def test_local_frame_bus_delivers_late_commits_in_order() -> None:
    store = FakeStore(range(1, 4))
    bus = LocalFrameBus(store.read_since, gap_wait=TIMEOUT)
    rec = Recorder()
    bus.subscribe(rec)
    bus.publish("o", [frame(1)])
    bus.publish("o", [frame(3)])  # commit 2 reported late by a pooled backend
    bus.publish("o", [frame(2)])
    bus.publish("o", [frame(3)])
    assert rec.sids() == [1, 2, 3]
    await bus.close()


async def test_local_frame_bus_without_a_reader_delivers_as_published() -> None:
    bus = LocalFrameBus()
    rec = Recorder()
    bus.subscribe(rec)
    bus.publish("o", [frame(2)])
    bus.publish("o", [])
    bus.publish("o", [frame(1)])
    assert rec.sids() == [2, 1]
    await bus.close()
