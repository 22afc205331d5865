"""The frames this node commits reach the frame bus in queue order, each commit once:
from the publisher alone (commits settled in any order, attached late, failing), and
from the record feed on the real store (mutations that append with frames, coalesced
edits and deletes that log frames on their own)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import anyio
import pytest

from crdt_sync.mutations import Mutation
from crdt_sync.records.publisher import FramePublisher
from persistence.store import Commit, Frame, StoreWriteError
from rooms.frame_bus import LocalFrameBus
from tests.unit.live_node import ORG, fields_update, live_node

pytestmark = pytest.mark.anyio

TIMEOUT = 10


def frame(sid: int, org: str = ORG) -> Frame:
    return Frame(sid, org, "t", str(sid), "u", {"n": sid}, "w", 1)


class Recorder:
    """A bus subscriber: every frame delivered, in delivery order."""

    def __init__(self, bus: LocalFrameBus) -> None:
        self.frames: list[Frame] = []
        bus.subscribe(self.frames.extend)

    @property
    def sids(self) -> list[int]:
        return [f.sid for f in self.frames]


async def settled() -> None:
    """Let done-callbacks run (they are scheduled, not called, by set_result)."""
    for _ in range(3):
        await asyncio.sleep(0)


def same(frames: list[Frame]) -> list[Frame]:
    return frames


async def test_commits_are_published_in_queue_order_whatever_order_they_settle_in() -> None:
    bus = LocalFrameBus()
    got = Recorder(bus)
    publisher = FramePublisher(bus)
    loop = asyncio.get_running_loop()
    first, second, third = (Commit(loop=loop) for _ in range(3))
    publisher.publish_on_commit(first, same)
    # An append that waited for room: its place is taken at queue time, its commit
    # attached after it is already done (its frames must still come first).
    waiting = publisher.reserve()
    publisher.publish_on_commit(third, same)
    third.set_result([frame(4)])
    second.set_result([frame(2), frame(3)])
    await settled()
    assert got.sids == []  # the first is not committed yet
    first.set_result([frame(1)])
    await settled()
    assert got.sids == [1]  # the waiting append holds back what was queued after it
    publisher.attach(waiting, second, same)
    await settled()
    assert got.sids == [1, 2, 3, 4]


async def test_a_failed_commit_or_a_dropped_place_publishes_nothing_and_holds_nothing() -> None:
    bus = LocalFrameBus()
    got = Recorder(bus)
    publisher = FramePublisher(bus)
    loop = asyncio.get_running_loop()
    failed, ok = Commit(loop=loop), Commit(loop=loop)
    publisher.publish_on_commit(failed, same)
    refused = publisher.reserve()  # the store refused the write: nothing was queued
    publisher.publish_on_commit(ok, same)
    ok.set_result([frame(1)])
    failed.set_exception(StoreWriteError("disk full"))
    failed.exception()  # retrieved, as the store marks it
    await settled()
    assert got.sids == []
    publisher.drop(refused)
    await settled()
    assert got.sids == [1]


async def test_a_failing_subscriber_is_counted_and_the_frames_behind_still_go_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = LocalFrameBus()
    calls = {"n": 0}

    def broken(frames: list[Frame]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a subscriber's bug")

    bus.subscribe(broken)
    got = Recorder(bus)
    published: list[int] = []
    publisher = FramePublisher(bus, lambda frames: published.extend(f.sid for f in frames))
    loop = asyncio.get_running_loop()
    commits = [Commit(loop=loop) for _ in range(2)]
    for commit in commits:
        publisher.publish_on_commit(commit, same)
    with caplog.at_level(logging.ERROR):
        commits[0].set_result([frame(1)])
        await settled()
        commits[1].set_result([frame(2)])
        await settled()
    assert "publishing failed" in caplog.text
    assert publisher.failures == 1
    assert published == [1, 2]
    # The local bus hands frames to its subscribers in turn (guarding each one is the
    # subscriber's business: the hub guards each connection); the next commit's
    # frames reached everyone.
    assert got.sids == [2]


# -- the record feed on the real store ------------------------------------------------------


async def test_every_frame_the_feed_commits_is_published_once_in_sid_order(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with live_node(tmp_path, coalesce_ms=0) as node:
            got = Recorder(node.feed.publisher.bus)  # type: ignore[arg-type]
            feed = node.feed
            # Mutations: frames appended with their update (one store transaction).
            results = await feed.mutations.mutate_many(
                ORG,
                [Mutation("task", str(i), "i", {"n": i}) for i in range(3)],
                actor="alice",
                client_id=None,
            )
            assert all(isinstance(r, dict) and r["status"] == 201 for r in results), results
            # An edit of a loaded record: coalesced, then logged on its own.
            room = await node.manager.hold(ORG, "task/1")
            try:
                editor = node.connection("bob")
                update = fields_update(room, n=10)
                room.join(editor)
                await room.on_update(editor, update, None)
                while len(got.frames) < 4:  # bounded by the fail_after above
                    await anyio.sleep(0.01)
                room.leave(editor)
            finally:
                node.manager.unhold(room)
            # A delete: a "d" frame logged with the doc's deletion.
            assert await feed.mutations.delete(ORG, "task/2", actor="carol") is not None
            stored = (await node.store.read_frames(ORG, 0)).frames
    assert [f.op for f in stored] == ["i", "i", "i", "u", "d"]
    assert got.frames == stored  # each once, in sid order
    assert feed.publisher.frames_logged == len(stored)
    assert [r["sid"] for r in results] == [f.sid for f in stored[:3]]  # type: ignore[index]


async def test_the_writes_of_one_group_commit_are_one_publication_per_org() -> None:
    bus = LocalFrameBus()
    publications: list[list[tuple[str, int]]] = []
    bus.subscribe(lambda frames: publications.append([(f.org, f.sid) for f in frames]))
    publisher = FramePublisher(bus)
    loop = asyncio.get_running_loop()
    commits = [Commit(loop=loop) for _ in range(4)]
    for commit in commits:
        publisher.publish_on_commit(commit, same)
    # one group commit settles them all in one go
    for sid, commit in enumerate(commits[:3], start=1):
        commit.set_result([frame(sid)])
    commits[3].set_result([frame(1, org="other")])
    await settled()
    assert publications == [[("default", 1), ("default", 2), ("default", 3)], [("other", 1)]]


async def test_a_mutation_request_is_one_transaction_and_one_publication(tmp_path: Path) -> None:
    """Its records' docs are loaded one by one (each load yields), yet the writes are
    queued together: one commit, one publication, consecutive sids, one tx; even when
    the store commits one write per transaction otherwise (``max_batch=1``)."""
    with anyio.fail_after(TIMEOUT):
        async with live_node(tmp_path, coalesce_ms=0, max_batch=1) as node:
            await node.feed.mutations.mutate_many(
                ORG, [Mutation("task", "0", "i", {"n": 0})], actor="alice", client_id=None
            )
            publications: list[list[int]] = []
            node.feed.publisher.bus.subscribe(
                lambda frames: publications.append([f.sid for f in frames])
            )
            commits = node.store.stats().commits
            mutations = [Mutation("task", str(i), "i", {"n": i}) for i in range(1, 4)]
            mutations.append(Mutation("task", "0", "u", {"n": 9}))
            results = await node.feed.mutations.mutate_many(
                ORG, mutations, actor="alice", client_id=None, tx="t-1"
            )
            assert node.store.stats().commits == commits + 1
    assert [r["tx"] for r in results] == ["t-1"] * 4  # type: ignore[index]
    sids = [r["sid"] for r in results]  # type: ignore[index]
    assert publications == [sids] and sids == list(range(sids[0], sids[0] + 4))
