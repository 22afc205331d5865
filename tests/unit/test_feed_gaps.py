"""No silent gaps in the frame feed: a subscriber's sids are gap-free and strictly
increasing, or its last message is a reset (``since_too_old`` with the bootstrap cursor).
A subscriber with a grant gets exactly the frames of the records it covers, in order,
without a gap among them (its cursor moves past the others).

Property test over interleavings of writes, trims and reconnects, run against the
real catch-up (``crdt_sync.sync_stream.catch_up``), a real SQLite store and a real
FeedHub fed as the node feeds it (the frames of each commit, published on a frame
bus in queue order). The client reads slowly: each message it takes lets the next action of the
example happen first, so writes and trims land between catch-up pages, inside the
live phase and across reconnects.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_sync.auth.principal import Grant
from crdt_sync.http_api import ApiError
from crdt_sync.records.publisher import FramePublisher
from crdt_sync.records.wire import encode_json_array, encode_json_event
from crdt_sync.sync_stream import catch_up
from persistence.sqlite import SQLiteStore
from persistence.store import FrameBatch, FrameDraft
from rooms import feed_hub
from rooms.close_codes import CloseCode
from rooms.connection import Connection
from rooms.feed_hub import FeedHub, FeedSubscriber
from rooms.frame_bus import LocalFrameBus

ORG = "default"
TIMEOUT = 30

Action = tuple[str, int, str]  # ("write", n, t) | ("trim", keep, "") | ("reconnect", 0, "")

actions = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 12), st.sampled_from(["a", "b"])),
    st.tuples(st.just("trim"), st.integers(1, 25), st.just("")),
    st.tuples(st.just("reconnect"), st.just(0), st.just("")),
)


class Poke:
    """Something changed (a message arrived, a catch-up ended, an action ran).

    asyncio primitives: the connection's sender runs actions in a plain asyncio task.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()


class World:
    """The store, the hub, what was committed, and the client's view of it."""

    def __init__(
        self, store: SQLiteStore, t: str | None, todo: list[Action], docs: Grant | None = None
    ) -> None:
        self.store = store
        self.hub = FeedHub()
        bus = LocalFrameBus()
        bus.subscribe(self.hub.publish)
        self.publisher = FramePublisher(bus)  # what the node commits, published
        self.t = t
        self.docs = docs
        self.committed: list[tuple[int, str, str]] = []
        self.todo = deque(todo)
        self.lock = asyncio.Lock()
        self.poke = Poke()
        self.received: list[int] = []
        self.reset: dict[str, Any] | None = None
        self.reset_since: int | None = None
        self.after_reset: list[bytes] = []
        self.reconnect_wanted = False
        self.written = 0

    async def write(self, n: int, t: str) -> None:
        ids = [str(1 + i % 2) for i in range(n)]  # records t/1 and t/2, alternating
        commits = []
        for id in ids:  # queued together: they share commits
            self.written += 1
            p = {"n": self.written}  # a new value each time (the store logs only what is new)
            draft = FrameDraft(t=t, id=id, op="u", p=p, who="w", at=1, ctx={}, record=p)
            commit = self.store.log_frames(ORG, FrameBatch((draft,)))
            self.publisher.publish_on_commit(commit, lambda frames: frames)
            commits.append(commit)
        for id, commit in zip(ids, commits, strict=True):
            (frame,) = await commit
            self.committed.append((frame.sid, t, id))
        # The publisher publishes a commit's frames in the loop iteration after it
        # completes (one publication per group commit): let it, before the next action.
        await asyncio.sleep(0)

    async def act(self) -> None:
        async with self.lock:
            if not self.todo:
                return
            kind, n, t = self.todo.popleft()
            if kind == "write":
                await self.write(n, t)
            elif kind == "trim":
                await self.store.trim_frames(ORG, n)
            else:  # the driver closes the connection and connects again
                self.reconnect_wanted = True
        self.poke.set()

    def expected(self, since: int) -> list[int]:
        return [
            s
            for s, t, id in self.committed
            if s > since
            and self.t in (None, t)
            and (self.docs is None or self.docs.covers(f"{t}/{id}"))
        ]


class SlowClient:
    """The client's socket: before taking each message, the next action happens."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.conn: Connection | None = None
        self.closed: tuple[int, str] | None = None

    async def send(self, message: bytes) -> None:
        world = self.world
        if world.reset is not None:
            world.after_reset.append(message)
        else:
            body = json.loads(message)
            if isinstance(body, list):
                world.received += [frame["sid"] for frame in body]
            elif body.get("error") == "since_too_old":
                world.reset = body
        world.poke.set()
        await world.act()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.world.poke.set()


async def connect(world: World, since: int, page: int) -> None:
    """One connection: the endpoint's start check, catch-up, live, until it closes."""
    oldest, newest = await world.store.frame_bounds(ORG)
    if not oldest <= since <= newest:  # refused at connect, as the endpoints do
        world.reset = {"error": "since_too_old", "oldest_sid": oldest, "newest_sid": newest}
        world.reset_since = since
        return
    socket = SlowClient(world)
    conn = socket.conn = Connection(socket)
    sub = FeedSubscriber(
        conn,
        ORG,
        t=world.t,
        since=since,
        encode=encode_json_array,
        encode_event=encode_json_event,
        docs=world.docs,
    )
    world.reconnect_wanted = False

    async def run_catch_up() -> None:
        try:
            await catch_up(world.store, world.hub, sub, page_size=page)
        except ApiError:
            world.reset_since = sub.last_sid
        world.poke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        tg.start_soon(run_catch_up)
        while not conn.closing:
            if world.reconnect_wanted:
                conn.close(CloseCode.NORMAL, "client reconnects")
                break
            if world.todo:
                if sub.live:
                    await conn.wait_idle()
                    await world.act()
                    continue
            elif sub.live and world.received[-1:] == world.expected(0)[-1:]:
                conn.close(CloseCode.NORMAL, "test over")
                break
            await world.poke.wait()
        while socket.closed is None:  # the close frame follows what was queued
            await world.poke.wait()
        tg.cancel_scope.cancel()
    world.hub.unsubscribe(sub)
    if world.reset is not None:
        assert socket.closed is not None and socket.closed[0] == CloseCode.SINCE_TOO_OLD


async def scenario(
    path: Path,
    first: int,
    todo: list[Action],
    t: str | None,
    page: int,
    docs: Grant | None = None,
) -> dict[str, Any] | None:
    """Run one example; returns the reset the client got, if any."""
    async with SQLiteStore(path, commit_interval_ms=0) as store:
        world = World(store, t, todo, docs)
        await world.write(first, "a")
        await world.write(first // 2, "b")
        start = 0
        with anyio.fail_after(TIMEOUT):
            while True:
                since = world.received[-1] if world.received else start
                await connect(world, since, page)
                if world.reset is not None or not world.reconnect_wanted:
                    break
        # Whatever it got is every frame of its type from the start up to the last
        # one it got, in order, without a hole...
        last = world.received[-1] if world.received else start
        expected = [s for s in world.expected(start) if s <= last]
        assert world.received == expected, "gap or disorder in the frames received"
        if world.reset is None:
            assert not world.todo
            assert world.received == world.expected(start), "frames never delivered"
            return None
        # ...and a reset ends the stream, only when frames it lacks are truly gone.
        assert world.after_reset == []
        cursor = world.reset_since
        assert cursor is not None
        if docs is None:
            assert cursor == last
        else:  # it may have moved past frames it does not see, never before its last
            assert cursor >= last
        assert cursor < world.reset["oldest_sid"] or cursor > world.reset["newest_sid"]
        if "bootstrap" in world.reset:
            assert world.reset["bootstrap"].startswith("/sync/v1/records")
        return world.reset


def run_buffered(max_buffered: int, *args: Any) -> dict[str, Any] | None:
    """:func:`scenario` on a fresh store, with the hub buffering at most ``max_buffered``
    frames of a subscriber that is catching up."""
    saved = feed_hub.MAX_BUFFERED
    feed_hub.MAX_BUFFERED = max_buffered
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return anyio.run(scenario, Path(tmp) / "store.db", *args, backend="asyncio")
    finally:
        feed_hub.MAX_BUFFERED = saved


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    first=st.integers(0, 30),
    todo=st.lists(actions, max_size=12),
    t=st.sampled_from([None, "a"]),
    page=st.integers(1, 7),
    max_buffered=st.sampled_from([3, 10_000]),
)
def test_subscriber_gets_gap_free_sids_or_ends_with_reset(
    first: int, todo: list[Action], t: str | None, page: int, max_buffered: int
) -> None:
    run_buffered(max_buffered, first, todo, t, page)


def test_trim_during_catch_up_resets_instead_of_skipping() -> None:
    """The finding, forced: the reader takes page one, 40 frames are written and the log
    is trimmed to 10 before it takes page two."""
    todo: list[Action] = [("write", 12, "a"), ("write", 12, "a"), ("write", 12, "a")]
    todo.append(("trim", 10, ""))
    with tempfile.TemporaryDirectory() as tmp:
        reset = anyio.run(scenario, Path(tmp) / "store.db", 20, todo, None, 5, backend="asyncio")
    assert reset is not None and reset["bootstrap"] == "/sync/v1/records"
    assert reset["oldest_sid"] == 30 + 3 * 12 - 10


GRANTS = [
    Grant(("a/1",), "read"),
    Grant(("b/*",), "read"),
    Grant(("a/2", "b/1"), "read"),
    Grant((), "read"),  # nothing at all: its cursor still moves, it gets no frame
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    first=st.integers(0, 30),
    todo=st.lists(actions, max_size=12),
    t=st.sampled_from([None, "a"]),
    page=st.integers(1, 7),
    max_buffered=st.sampled_from([3, 10_000]),
    docs=st.sampled_from(GRANTS),
)
def test_a_granted_subscriber_gets_exactly_the_covered_frames_in_order(
    first: int, todo: list[Action], t: str | None, page: int, max_buffered: int, docs: Grant
) -> None:
    run_buffered(max_buffered, first, todo, t, page, docs)


def test_catch_up_pages_past_frames_the_grant_hides() -> None:
    """Pages full of frames it may not see: catch-up moves on to the covered one."""
    todo: list[Action] = [("write", 1, "a")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        # 30 frames of a/1 and a/2 and 15 of b/1, b/2 first, pages of 2.
        reset = anyio.run(
            scenario, path, 30, todo, None, 2, Grant(("b/2",), "read"), backend="asyncio"
        )
    assert reset is None
