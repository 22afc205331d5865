"""The Redis buses against real Redis: the shared one at 127.0.0.1:6379 (a unique
prefix per test) and, for outages, a private redis-server that the test stops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from persistence.store import Frame
from rooms.broadcaster import RemoteAwareness, RemoteUpdate
from rooms.redis_broadcaster import RedisBroadcaster
from rooms.redis_frame_bus import RedisFrameBus
from rooms.redis_link import Backoff
from tests.cluster import PrivateRedis

pytestmark = pytest.mark.anyio

SHARED = "redis://127.0.0.1:6379/0"
TIMEOUT = 15
FAST = Backoff(base=0.05, cap=0.5)  # reconnect quickly in tests


async def until(cond: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
async def shared_redis_up() -> None:
    client = Redis.from_url(SHARED)
    try:
        await client.ping()
    except OSError as exc:  # pragma: no cover - the machine's Redis is expected
        pytest.fail(f"the shared Redis at {SHARED} does not answer: {exc!r}")
    finally:
        await client.aclose()


class Sink:
    """A RoomSink that records what it is handed."""

    def __init__(self) -> None:
        self.updates: list[RemoteUpdate] = []
        self.awareness: list[RemoteAwareness] = []
        self.gone: list[str] = []
        self.resumed = 0

    def remote_update(self, update: RemoteUpdate) -> None:
        self.updates.append(update)

    def remote_awareness(self, awareness: RemoteAwareness) -> None:
        self.awareness.append(awareness)

    def node_gone(self, node: str) -> None:
        self.gone.append(node)

    def bus_resumed(self) -> None:
        self.resumed += 1


def update(node: str, uid: int, org: str = "acme", name: str = "notes:a/b") -> RemoteUpdate:
    return RemoteUpdate(node, org, name, uid, uid - 1, f"u{uid}".encode(), "alice")


@asynccontextmanager
async def broadcaster(url: str, node: str, prefix: str, **kw) -> AsyncIterator[RedisBroadcaster]:
    bus = RedisBroadcaster(url, node, prefix=prefix, backoff=FAST, **kw)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


# -- broadcaster -------------------------------------------------------------------


async def test_nodes_deliver_each_others_messages_never_their_own(prefix: str) -> None:
    async with (
        broadcaster(SHARED, "n1", prefix) as n1,
        broadcaster(SHARED, "n2", prefix) as n2,
    ):
        assert n1.health() is None and n2.health() is None
        s1, s2 = Sink(), Sink()
        await n1.join("acme", "notes:a/b", s1)
        await n2.join("acme", "notes:a/b", s2)
        n1.publish_update(update("n1", 1))
        n1.publish_awareness(RemoteAwareness("n1", "acme", "notes:a/b", b"\x01cursor"))
        await until(lambda: len(s2.updates) == 1 and len(s2.awareness) == 1)
        n2.publish_update(update("n2", 2))  # after n1's own messages reached n1's channel
        await until(lambda: len(s1.updates) == 1)
        assert s2.updates == [update("n1", 1)]
        assert s2.awareness == [RemoteAwareness("n1", "acme", "notes:a/b", b"\x01cursor")]
        assert s1.updates == [update("n2", 2)]  # n1's own came back first and was dropped
        assert s1.awareness == []
        assert n1.own == 2 and n2.own == 1
        assert (n1.published, n1.dropped, n2.delivered) == (2, 0, 2)


async def test_a_failing_sink_does_not_stop_delivery(prefix: str) -> None:
    class Failing(Sink):
        def remote_update(self, update: RemoteUpdate) -> None:
            super().remote_update(update)
            raise RuntimeError("room bug")

    async with (
        broadcaster(SHARED, "n1", prefix) as n1,
        broadcaster(SHARED, "n2", prefix) as n2,
    ):
        failing, fine = Failing(), Sink()
        await n2.join("acme", "a", failing)
        await n2.join("acme", "b", fine)
        n1.publish_update(update("n1", 1, "acme", "a"))
        n1.publish_update(update("n1", 2, "acme", "a"))
        n1.publish_update(update("n1", 3, "acme", "b"))
        await until(lambda: len(fine.updates) == 1)
        assert [u.update_id for u in failing.updates] == [1, 2]
        assert n2.health() is None


async def test_a_burst_arrives_complete_and_in_order(prefix: str) -> None:
    async with (
        broadcaster(SHARED, "n1", prefix) as n1,
        broadcaster(SHARED, "n2", prefix) as n2,
    ):
        sink = Sink()
        await n2.join("acme", "doc", sink)
        for uid in range(1, 2001):  # far more than one pipeline batch
            n1.publish_update(update("n1", uid, "acme", "doc"))
        await until(lambda: len(sink.updates) == 2000)
        assert [u.update_id for u in sink.updates] == list(range(1, 2001))
        await until(lambda: n1.published == 2000)  # counted when Redis answers
        assert n1.dropped == 0


async def test_docs_are_separate_channels_and_leave_stops_delivery(prefix: str) -> None:
    async with (
        broadcaster(SHARED, "n1", prefix) as n1,
        broadcaster(SHARED, "n2", prefix) as n2,
    ):
        a, b = Sink(), Sink()
        await n2.join("acme", "a", a)
        await n2.join("acme", "a:b", b)  # would collide with org "acme:a", doc "b" unescaped
        n1.publish_update(update("n1", 1, "acme", "a"))
        n1.publish_update(update("n1", 1, "acme:a", "b"))
        n1.publish_update(update("n1", 2, "acme", "a:b"))
        await until(lambda: len(b.updates) == 1)
        assert [u.update_id for u in a.updates] == [1]
        assert [(u.org, u.name) for u in b.updates] == [("acme", "a:b")]
        await n2.leave("acme", "a")
        n1.publish_update(update("n1", 3, "acme", "a"))
        n1.publish_update(update("n1", 4, "acme", "a:b"))
        await until(lambda: len(b.updates) == 2)
        assert [u.update_id for u in a.updates] == [1]


async def test_foreign_bytes_on_a_doc_channel_are_dropped(prefix: str) -> None:
    async with broadcaster(SHARED, "n1", prefix) as n1:
        sink = Sink()
        await n1.join("acme", "doc", sink)
        client = Redis.from_url(SHARED)
        try:
            channel = f"{prefix}:doc:acme:doc"
            await client.publish(channel, b"\x00garbage")
            await client.publish(channel, b"\x01\x01" + b"\x00" * 6)  # truncated
        finally:
            await client.aclose()
        await until(lambda: n1.malformed == 2)
        assert sink.updates == [] and sink.awareness == []
        assert n1.health() is None


async def test_clean_close_reports_the_node_gone(prefix: str) -> None:
    async with broadcaster(SHARED, "n1", prefix) as n1:
        heard, other = Sink(), Sink()
        await n1.join("acme", "heard", heard)
        await n1.join("acme", "other", other)
        async with broadcaster(SHARED, "n2", prefix) as n2:
            await n2.join("acme", "heard", Sink())
            n2.publish_awareness(RemoteAwareness("n2", "acme", "heard", b"\x01"))
            n2.publish_update(update("n2", 1, "acme", "other"))  # not awareness
            await until(lambda: len(heard.awareness) == 1)
            await asyncio.sleep(n1.renew_ms / 1000 * 2)  # leases checked meanwhile
            assert heard.gone == []
        await until(lambda: heard.gone == ["n2"], timeout=5)  # within a lease check
        assert other.gone == []


LEASE_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from rooms.broadcaster import RemoteAwareness
    from rooms.redis_broadcaster import RedisBroadcaster

    class Sink:
        def __getattr__(self, name):
            return lambda *args: None

    async def main():
        url, prefix = sys.argv[1:]
        bus = RedisBroadcaster(url, "doomed", prefix=prefix)
        await bus.start()
        await bus.join("acme", "doc", Sink())
        while True:
            bus.publish_awareness(RemoteAwareness("doomed", "acme", "doc", b"\\x01"))
            await asyncio.sleep(0.1)

    asyncio.run(main())
    """
)


async def test_a_killed_node_is_reported_gone_after_its_lease(prefix: str) -> None:
    async with broadcaster(SHARED, "n1", prefix) as n1:
        sink = Sink()
        await n1.join("acme", "doc", sink)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LEASE_HOLDER, SHARED, prefix
        )
        try:
            await until(lambda: len(sink.awareness) > 0)
            proc.send_signal(signal.SIGKILL)  # no goodbye: the lease key stays until its TTL
            with anyio.fail_after(TIMEOUT):
                await proc.wait()
            count = len(sink.awareness)
            await until(lambda: sink.gone == ["doomed"], timeout=10)
            assert len(sink.awareness) >= count  # only messages already in flight
            assert n1.nodes_gone == 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- frame bus ---------------------------------------------------------------------


class FrameLog:
    """The shared store's frame log (what ``read_since`` reads)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.reads = 0

    def commit(self, org: str, n: int) -> list[Frame]:
        out = []
        for _ in range(n):
            sid = 1 + sum(1 for f in self.frames + out if f.org == org)
            out.append(
                Frame(
                    sid=sid,
                    org=org,
                    t="task",
                    id=f"r{sid}",
                    op="u",
                    p={"n": sid, "s": "é"},
                    who="alice",
                    at=sid,
                    ctx={},
                )
            )
        self.frames += out
        return out

    async def read_since(self, org: str, sid: int) -> list[Frame]:
        self.reads += 1
        return [f for f in self.frames if f.org == org and f.sid > sid]


class FrameRecorder:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def __call__(self, frames: list[Frame]) -> None:
        self.frames += frames

    def sids(self, org: str) -> list[int]:
        return [f.sid for f in self.frames if f.org == org]


@asynccontextmanager
async def frame_bus(url: str, node: str, prefix: str, log: FrameLog):
    bus = RedisFrameBus(url, node, log.read_since, prefix=prefix, gap_wait=0.05, backoff=FAST)
    rec = FrameRecorder()
    bus.subscribe(rec)
    await bus.start()
    try:
        yield bus, rec
    finally:
        await bus.close()


async def test_frames_reach_every_node_in_order_once(prefix: str) -> None:
    store = FrameLog()
    async with (
        frame_bus(SHARED, "n1", prefix, store) as (b1, r1),
        frame_bus(SHARED, "n2", prefix, store) as (b2, r2),
    ):
        b1.publish("acme", store.commit("acme", 2))
        await until(lambda: r2.sids("acme") == [1, 2])  # else n2's first frame is 3
        b2.publish("acme", store.commit("acme", 1))
        b1.publish("zeta", store.commit("zeta", 1))
        await until(lambda: r1.sids("acme") == [1, 2, 3])  # causal order, so no gap
        b1.publish("acme", store.commit("acme", 2))
        await until(lambda: len(r2.sids("acme")) == 5 and len(r1.sids("acme")) == 5)
        await until(lambda: r2.sids("zeta") == [1])
        await until(lambda: (b1.own, b2.own) == (3, 1))  # every echo came back, dropped
        assert r1.sids("acme") == r2.sids("acme") == [1, 2, 3, 4, 5]
        assert r1.sids("zeta") == [1]
        assert [f for f in r2.frames if f.org == "acme"] == [
            f for f in store.frames if f.org == "acme"
        ]
        assert store.reads == 0  # no gap: the store was not read


async def test_a_lost_frame_message_is_read_from_the_store(prefix: str) -> None:
    store = FrameLog()
    async with (
        frame_bus(SHARED, "n1", prefix, store) as (b1, _),
        frame_bus(SHARED, "n2", prefix, store) as (_, r2),
    ):
        b1.publish("acme", store.commit("acme", 1))
        await until(lambda: r2.sids("acme") == [1])
        store.commit("acme", 2)  # sids 2, 3: committed, their message lost
        b1.publish("acme", store.commit("acme", 1))
        await until(lambda: r2.sids("acme") == [1, 2, 3, 4])
        assert store.reads >= 1


# -- outage ------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_an_outage_is_reported_survived_and_resynced(
    private_redis: PrivateRedis, prefix: str
) -> None:
    url = private_redis.url
    store = FrameLog()
    async with (
        broadcaster(url, "n1", prefix) as n1,
        broadcaster(url, "n2", prefix) as n2,
        frame_bus(url, "n1", prefix, store) as (f1, r1),
        frame_bus(url, "n2", prefix, store) as (f2, r2),
    ):
        s1, s2 = Sink(), Sink()
        await n1.join("acme", "doc", s1)
        await n2.join("acme", "doc", s2)
        n1.publish_update(update("n1", 1, "acme", "doc"))
        f1.publish("acme", store.commit("acme", 1))
        await until(lambda: len(s2.updates) == 1 and r2.sids("acme") == [1])
        assert (s1.resumed, s2.resumed) == (0, 0)

        private_redis.stop()
        await until(lambda: all(b.health() is not None for b in (n1, n2, f1, f2)))
        assert "redis" in (n1.health() or "")
        dropped = n1.dropped
        n1.publish_update(update("n1", 2, "acme", "doc"))  # neither raises nor blocks
        n1.publish_awareness(RemoteAwareness("n1", "acme", "doc", b"\x01"))
        f1.publish("acme", store.commit("acme", 2))  # n1's own subscribers still get it
        assert n1.dropped == dropped + 2
        assert r1.sids("acme") == [1, 2, 3]

        private_redis.start()  # same port
        await until(lambda: all(b.health() is None for b in (n1, n2, f1, f2)))
        await until(lambda: s1.resumed == 1 and s2.resumed == 1)
        assert n1.reconnects == 1 and f2.reconnects == 1
        # The frames lost in the outage arrive at n2 from the store, no later frame needed.
        await until(lambda: r2.sids("acme") == [1, 2, 3])
        n1.publish_update(update("n1", 3, "acme", "doc"))
        f1.publish("acme", store.commit("acme", 1))
        await until(lambda: len(s2.updates) == 2 and r2.sids("acme") == [1, 2, 3, 4])
        assert [u.update_id for u in s2.updates] == [1, 3]  # 2 was dropped, not queued
        assert r1.sids("acme") == [1, 2, 3, 4]


async def test_a_node_starts_while_redis_is_down(private_redis: PrivateRedis, prefix: str) -> None:
    url = private_redis.url
    private_redis.stop()
    bus = RedisBroadcaster(url, "n1", prefix=prefix, backoff=FAST)
    await bus.start()  # waits briefly, then keeps trying in the background
    try:
        assert bus.health() is not None
        sink = Sink()
        await bus.join("acme", "doc", sink)  # joined while down: subscribed when back
        private_redis.start()
        await until(lambda: bus.health() is None and sink.resumed == 1)
        async with broadcaster(url, "n2", prefix) as n2:
            n2.publish_update(update("n2", 1, "acme", "doc"))
            await until(lambda: len(sink.updates) == 1)
    finally:
        await bus.close()


class FreezingProxy:
    """TCP between the buses and Redis that can go silent without closing anything
    (a partition, a host that vanished): only a heartbeat can tell."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.frozen:  # a vanished host: the connection is never answered
            self._writers.append(writer)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if self.frozen:
                        continue  # swallowed: nothing arrives, nothing fails
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_a_silent_connection_is_noticed_and_replaced(
    private_redis: PrivateRedis, prefix: str
) -> None:
    async with FreezingProxy(private_redis.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with (
            broadcaster(url, "n1", prefix) as n1,
            broadcaster(private_redis.url, "n2", prefix) as n2,
        ):
            sink = Sink()
            await n1.join("acme", "doc", sink)
            n2.publish_update(update("n2", 1, "acme", "doc"))
            await until(lambda: len(sink.updates) == 1)
            proxy.frozen = True
            await until(lambda: n1.health() is not None)  # the heartbeat went unanswered
            proxy.frozen = False
            await until(lambda: n1.health() is None and sink.resumed == 1)
            n2.publish_update(update("n2", 2, "acme", "doc"))
            await until(lambda: len(sink.updates) == 2)
