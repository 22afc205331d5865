"""FeedHub fan-out to frame subscribers: catch-up without gaps or duplicates, filters,
shared encodings, overflow, presence events. Real Connections over an in-memory socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from crdt_sync.records.wire import (
    encode_json_array,
    encode_json_event,
    encode_sse,
    encode_sse_event,
)
from persistence.store import Frame
from rooms import feed_hub
from rooms.close_codes import CloseCode
from rooms.connection import Connection
from rooms.feed_hub import FeedHub, FeedSubscriber

from .live_node import RecordingTransport

pytestmark = pytest.mark.anyio

TIMEOUT = 5
ORG = "default"


MemorySocket = RecordingTransport


class StuckSocket(MemorySocket):
    """A client that stopped reading: every write blocks."""

    async def send(self, message: bytes) -> None:
        await anyio.Event().wait()


def frame(sid: int, t: str = "issue", id: str = "1", *, org: str = ORG, **ctx: Any) -> Frame:
    return Frame(sid, org, t, id, "u", {"n": sid}, "alice", 1000 + sid, ctx)


class Feed:
    """A hub and its subscribers, each with a running Connection."""

    def __init__(self, tg: TaskGroup) -> None:
        self.tg = tg
        self.hub = FeedHub()

    def subscribe(
        self,
        *,
        t: str | None = None,
        since: int = 0,
        org: str = ORG,
        encode: Callable[[list[Frame]], bytes] = encode_json_array,
        encode_event: Callable[[dict[str, Any]], bytes] = encode_json_event,
        live: bool = True,
    ) -> tuple[FeedSubscriber, MemorySocket]:
        socket = MemorySocket()
        conn = Connection(socket)
        self.tg.start_soon(conn.run)
        sub = FeedSubscriber(conn, org, t=t, since=since, encode=encode, encode_event=encode_event)
        self.hub.subscribe(sub)
        if live:
            assert sub.go_live()
        return sub, socket


@asynccontextmanager
async def running_feed() -> AsyncIterator[Feed]:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            feed = Feed(tg)
            try:
                yield feed
            finally:
                feed.hub.close_all(CloseCode.NORMAL, "test over")


async def delivered(*subs: FeedSubscriber) -> None:
    """Wait until everything queued so far was handed to the sockets."""
    for sub in subs:
        await sub.conn.wait_idle()


def sids(socket: MemorySocket) -> list[list[int]]:
    """The sids of each JSON-array message sent."""
    return [[f["sid"] for f in json.loads(message)] for message in socket.sent]


# -- catch-up and live -----------------------------------------------------------------


async def test_catch_up_buffers_then_go_live_sends_only_frames_past_the_read() -> None:
    async with running_feed() as feed:
        sub, socket = feed.subscribe(since=2, live=False)
        assert not sub.live
        # Committed while the subscriber reads the store: buffered, not sent.
        feed.hub.publish([frame(3), frame(4)])
        feed.hub.publish([frame(5)])
        await delivered(sub)
        assert socket.sent == []
        # Its store read saw 3 and 4 (the newest sid then was 4).
        sub.send([frame(3), frame(4)])
        sub.caught_up_to(4)
        assert sub.go_live()
        assert sub.live
        feed.hub.publish([frame(6), frame(7)])
        await delivered(sub)
    assert sids(socket) == [[3, 4], [5], [6, 7]]
    assert socket.closed == (1000, "test over")


async def test_go_live_drops_buffered_frames_the_read_already_had() -> None:
    async with running_feed() as feed:
        sub, socket = feed.subscribe(since=0, live=False)
        feed.hub.publish([frame(1)])
        feed.hub.publish([frame(2), frame(3)])
        sub.send([frame(1), frame(2), frame(3)])
        assert sub.go_live()
        feed.hub.publish([frame(4)])
        await delivered(sub)
    assert sids(socket) == [[1, 2, 3], [4]]


async def test_read_of_other_types_moves_the_cursor_past_them() -> None:
    async with running_feed() as feed:
        sub, socket = feed.subscribe(t="issue", since=0, live=False)
        feed.hub.publish([frame(1, "user"), frame(2, "issue"), frame(3, "user")])
        # Its read (of issues only) returned frame 2; the log's newest was 3.
        sub.send([frame(2, "issue")])
        sub.caught_up_to(3)
        assert sub.last_sid == 3
        assert sub.go_live()
        feed.hub.publish([frame(4, "user"), frame(5, "issue")])
        await delivered(sub)
    assert sids(socket) == [[2], [5]]


async def test_live_subscriber_gets_frames_in_order_without_duplicates() -> None:
    async with running_feed() as feed:
        sub, socket = feed.subscribe(since=10)
        feed.hub.publish([frame(9), frame(10)])  # it has these already
        feed.hub.publish([frame(10), frame(11), frame(12)])  # overlap: only the rest
        feed.hub.publish([frame(13)])
        await delivered(sub)
    assert sids(socket) == [[11, 12], [13]]


async def test_frames_of_other_tenants_are_not_delivered() -> None:
    async with running_feed() as feed:
        sub, socket = feed.subscribe()
        other, other_socket = feed.subscribe(org="acme")
        feed.hub.publish([frame(1), frame(2, org="acme"), frame(3)])
        await delivered(sub, other)
    assert sids(socket) == [[1, 3]]
    assert sids(other_socket) == [[2]]


async def test_t_filter() -> None:
    async with running_feed() as feed:
        issues, issue_socket = feed.subscribe(t="issue")
        everything, all_socket = feed.subscribe()
        feed.hub.publish([frame(1, "issue"), frame(2, "user"), frame(3, "issue")])
        feed.hub.publish([frame(4, "user")])  # nothing for the issue subscriber
        await delivered(issues, everything)
    assert sids(issue_socket) == [[1, 3]]
    assert sids(all_socket) == [[1, 2, 3], [4]]
    assert issues.last_sid == 3  # only what it was sent
    assert everything.last_sid == 4


async def test_same_encoder_and_filter_share_one_bytes_object() -> None:
    async with running_feed() as feed:
        a, socket_a = feed.subscribe()
        b, socket_b = feed.subscribe()
        c, socket_c = feed.subscribe(t="issue")
        d, socket_d = feed.subscribe(encode=encode_sse)
        feed.hub.publish([frame(1, "issue"), frame(2, "user")])
        await delivered(a, b, c, d)
    assert socket_a.sent[0] is socket_b.sent[0]
    assert socket_c.sent[0] is not socket_a.sent[0]
    assert sids(socket_c) == [[1]]
    assert socket_d.sent[0].startswith(b"id: 1\n")


async def test_buffer_overflow_makes_go_live_fail_until_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feed_hub, "MAX_BUFFERED", 3)
    async with running_feed() as feed:
        sub, socket = feed.subscribe(since=0, live=False)
        feed.hub.publish([frame(1), frame(2)])
        feed.hub.publish([frame(3), frame(4)])  # 4 buffered > 3
        assert sub.overflowed
        assert not sub.go_live()
        assert not sub.live  # still catching up, with an empty buffer
        # It reads the store again (1..4) and meanwhile 5 is committed.
        feed.hub.publish([frame(5)])
        sub.send([frame(1), frame(2), frame(3), frame(4)])
        sub.caught_up_to(4)
        assert sub.go_live()
        feed.hub.publish([frame(6)])
        await delivered(sub)
    assert sids(socket) == [[1, 2, 3, 4], [5], [6]]


async def test_unsubscribed_subscribers_get_nothing() -> None:
    async with running_feed() as feed:
        sub, socket = feed.subscribe()
        assert len(feed.hub) == 1
        feed.hub.unsubscribe(sub)
        feed.hub.unsubscribe(sub)  # idempotent
        assert len(feed.hub) == 0
        feed.hub.publish([frame(1)])
        await delivered(sub)
        sub.conn.close(CloseCode.NORMAL)
    assert socket.sent == []


async def test_slow_subscriber_is_closed_without_affecting_others() -> None:
    async with running_feed() as feed:
        fast, fast_socket = feed.subscribe()
        slow_conn = Connection(StuckSocket(), max_messages=2)  # its client never reads
        slow = FeedSubscriber(
            slow_conn,
            ORG,
            t=None,
            since=0,
            encode=encode_json_array,
            encode_event=encode_json_event,
        )
        feed.hub.subscribe(slow)
        assert slow.go_live()
        for sid in range(1, 5):
            feed.hub.publish([frame(sid)])
        await delivered(fast)
    assert slow_conn.close_code == CloseCode.SLOW_CLIENT
    assert sids(fast_socket) == [[1], [2], [3], [4]]


# -- presence events and shutdown --------------------------------------------------------


async def test_publish_event_reaches_only_watchers_and_all_presence() -> None:
    event = {"type": "presence", "t": "issue", "id": "1", "viewers": ["bob"]}
    async with running_feed() as feed:
        watcher, watcher_socket = feed.subscribe()
        watcher.watching.add(("issue", "1"))
        everyone, everyone_socket = feed.subscribe(encode=encode_sse, encode_event=encode_sse_event)
        everyone.all_presence = True
        elsewhere, elsewhere_socket = feed.subscribe()
        elsewhere.watching.add(("issue", "2"))
        catching_up, catching_up_socket = feed.subscribe(live=False)
        catching_up.all_presence = True
        other_org, other_org_socket = feed.subscribe(org="acme")
        other_org.all_presence = True
        assert feed.hub.publish_event(ORG, ("issue", "1"), event) == 2
        await delivered(watcher, everyone, elsewhere, catching_up, other_org)
    assert [json.loads(m) for m in watcher_socket.sent] == [event]
    assert everyone_socket.sent == [encode_sse_event(event)]
    assert everyone_socket.sent[0].startswith(b"event: presence\ndata: {")
    assert elsewhere_socket.sent == []
    assert catching_up_socket.sent == []
    assert other_org_socket.sent == []


async def test_publish_event_shares_bytes_and_skips_closing_connections() -> None:
    event = {"type": "presence", "t": "issue", "id": "1"}
    async with running_feed() as feed:
        a, socket_a = feed.subscribe()
        b, socket_b = feed.subscribe()
        closed, _ = feed.subscribe()
        for sub in (a, b, closed):
            sub.all_presence = True
        closed.conn.close(CloseCode.NORMAL)
        assert feed.hub.publish_event(ORG, ("issue", "1"), event) == 2
        await delivered(a, b)
    assert socket_a.sent[0] is socket_b.sent[0]


async def test_close_all_closes_every_subscriber_of_every_tenant() -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            feed = Feed(tg)
            _, socket_a = feed.subscribe()
            _, socket_b = feed.subscribe(org="acme")
            _, socket_c = feed.subscribe(live=False)
            feed.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
    for socket in (socket_a, socket_b, socket_c):
        assert socket.closed == (int(CloseCode.GOING_AWAY), "server shutting down")
