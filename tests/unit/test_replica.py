"""rooms.replica: two nodes' rooms of one doc on one shared store, joined by a bus.

The bus here is an in-process pair (a unit test of the replica's rules: chain, gap
repair, awareness owners); the Redis bus has its own integration tests and the
several-node tests run real processes on Redis and PostgreSQL.
"""

from __future__ import annotations

import anyio
import pytest
from pycrdt import Doc, Text

from persistence.memory import MemoryStore
from rooms.broadcaster import RemoteAwareness, RemoteUpdate, RoomSink
from rooms.codec import AwarenessEntry, encode_awareness_update
from rooms.replica import Replica
from rooms.room import Origin, Room

pytestmark = pytest.mark.anyio

TIMEOUT = 10


class PairBus:
    """What one node publishes reaches the other node's sinks (unless ``dropping``)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.peer: PairBus | None = None
        self.sinks: dict[tuple[str, str], RoomSink] = {}
        self.dropping = False
        self.published: list[RemoteUpdate | RemoteAwareness] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def join(self, org: str, name: str, sink: RoomSink) -> None:
        self.sinks[(org, name)] = sink

    async def leave(self, org: str, name: str) -> None:
        self.sinks.pop((org, name), None)

    def _deliver(self, message: RemoteUpdate | RemoteAwareness) -> None:
        self.published.append(message)
        if self.dropping or self.peer is None:
            return
        sink = self.peer.sinks.get((message.org, message.name))
        if sink is None:
            return
        if isinstance(message, RemoteUpdate):
            sink.remote_update(message)
        else:
            sink.remote_awareness(message)

    def publish_update(self, update: RemoteUpdate) -> None:
        self._deliver(update)

    def publish_awareness(self, awareness: RemoteAwareness) -> None:
        self._deliver(awareness)

    def health(self) -> str | None:
        return None


def text_update(doc: Doc, pos: int, chunk: str) -> bytes:
    before = doc.get_state()
    doc.get("body", type=Text).insert(pos, chunk)
    return doc.get_update(before)


def body(room: Room) -> str:
    return str(room.doc.get("body", type=Text))


async def two_nodes(store: MemoryStore, tg: anyio.abc.TaskGroup):
    a_bus, b_bus = PairBus("a"), PairBus("b")
    a_bus.peer, b_bus.peer = b_bus, a_bus
    rooms = []
    for bus in (a_bus, b_bus):
        room = Room("default", "note", store)
        await room.load()
        room.replica = Replica(room, bus, store)
        await tg.start(room.replica.run)
        rooms.append(room)
    return a_bus, b_bus, rooms[0], rooms[1]


async def wait_for(condition, what: str) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_committed_update_reaches_the_other_node_and_advances_both_chains() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        a_bus, b_bus, a, b = await two_nodes(store, tg)
        writer = Doc()
        appended = await a.apply_update(
            text_update(writer, 0, "hello"), actor="ann", origin=Origin.HTTP
        )
        committed = await appended.durable
        await wait_for(lambda: body(b) == "hello", "b holds a's update")
        assert a.replica.last == b.replica.last == committed.update_id
        [sent] = [m for m in a_bus.published if isinstance(m, RemoteUpdate)]
        assert (sent.origin, sent.actor, sent.prev_update_id) == ("a", "ann", 0)
        assert b.replica.repairs == 0  # nothing was missing
        # b relayed nothing of it back (it only asked, once, for the others' awareness)
        assert [m for m in b_bus.published if isinstance(m, RemoteUpdate)] == []
        tg.cancel_scope.cancel()


async def test_a_lost_message_is_repaired_from_the_store_at_the_next_update() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        a_bus, _b_bus, a, b = await two_nodes(store, tg)
        writer = Doc()
        a_bus.dropping = True
        first = await a.apply_update(
            text_update(writer, 0, "lost "), actor="ann", origin=Origin.HTTP
        )
        await first.durable
        a_bus.dropping = False
        second = await a.apply_update(
            text_update(writer, 5, "found"), actor="ann", origin=Origin.HTTP
        )
        committed = await second.durable
        await wait_for(lambda: b.replica.last == committed.update_id, "b repaired the gap")
        assert body(b) == "lost found"
        assert b.replica.repairs == 1
        tg.cancel_scope.cancel()


async def test_after_an_outage_the_store_is_read_without_any_further_update() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        a_bus, _b_bus, a, b = await two_nodes(store, tg)
        a_bus.dropping = True
        appended = await a.apply_update(text_update(Doc(), 0, "x"), actor="ann", origin=Origin.HTTP)
        committed = await appended.durable
        assert body(b) == ""
        b.replica.bus_resumed()
        await wait_for(lambda: body(b) == "x", "b read the store")
        assert b.replica.last == committed.update_id
        tg.cancel_scope.cancel()


async def test_concurrent_commits_on_both_nodes_converge_without_a_fork() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        _a_bus, _b_bus, a, b = await two_nodes(store, tg)
        commits = []
        for i in range(20):
            room = a if i % 2 else b
            doc = Doc()
            appended = await room.apply_update(
                text_update(doc, 0, f"{i:02d}"), actor="x", origin=Origin.HTTP
            )
            commits.append(appended.durable)
        results = [await c for c in commits]
        newest = max(r.update_id for r in results)
        await wait_for(lambda: a.replica.last == b.replica.last == newest, "both at the head")
        assert body(a) == body(b) and len(body(a)) == 40
        tg.cancel_scope.cancel()


async def test_awareness_of_another_node_is_shown_and_dropped_when_that_node_is_gone() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        _a_bus, _b_bus, a, b = await two_nodes(store, tg)
        entry = AwarenessEntry(client_id=7, clock=1, state='{"user":"ann"}')
        a.set_presence(1, entry)
        await wait_for(lambda: len(b.awareness) == 1, "b shows ann")
        b.replica.node_gone("a")
        assert len(b.awareness) == 0
        assert len(a.awareness) == 1  # a's own state is a's business
        tg.cancel_scope.cancel()


async def test_a_remote_awareness_message_that_does_not_decode_is_dropped() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        _a_bus, _b_bus, _a, b = await two_nodes(store, tg)
        b.replica.remote_awareness(RemoteAwareness("a", "default", "note", b"\x05garbage"))
        ok = encode_awareness_update((AwarenessEntry(3, 1, '{"u":1}'),))
        b.replica.remote_awareness(RemoteAwareness("a", "default", "note", ok))
        assert len(b.awareness) == 1
        tg.cancel_scope.cancel()


async def test_a_node_that_loads_the_doc_later_is_told_the_awareness_states_of_the_others() -> None:
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        a_bus, b_bus = PairBus("a"), PairBus("b")
        a_bus.peer, b_bus.peer = b_bus, a_bus
        a = Room("default", "note", store)
        await a.load()
        a.replica = Replica(a, a_bus, store)
        await tg.start(a.replica.run)
        a.set_presence(1, AwarenessEntry(client_id=7, clock=1, state='{"user":"ann"}'))
        b = Room("default", "note", store)  # loads the doc after ann showed herself
        await b.load()
        b.replica = Replica(b, b_bus, store)
        await tg.start(b.replica.run)
        await wait_for(lambda: len(b.awareness) == 1, "b was told about ann")
        # a answers with its own clients' states only, never b's (no echo loop)
        assert [e.client_id for e in b.awareness.current()] == [7]
        tg.cancel_scope.cancel()


async def test_what_a_node_committed_while_its_link_was_down_reaches_the_others_once_it_is_back():
    async with MemoryStore() as store, anyio.create_task_group() as tg:
        a_bus, _b_bus, a, b = await two_nodes(store, tg)
        a_bus.dropping = True  # a's own link is down: its publishes are lost
        appended = await a.apply_update(
            text_update(Doc(), 0, "offline"), actor="ann", origin=Origin.HTTP
        )
        committed = await appended.durable
        a_bus.dropping = False
        a.replica.bus_resumed()  # a is back: it announces its head
        await wait_for(lambda: body(b) == "offline", "b repaired from the store")
        assert b.replica.last == committed.update_id
        tg.cancel_scope.cancel()


async def test_a_replica_that_fails_starts_again_and_catches_up(monkeypatch) -> None:
    from rooms import manager as manager_module
    from rooms.manager import RoomManager

    monkeypatch.setattr(manager_module, "REPLICA_RESTART_DELAY", 0.01)
    async with MemoryStore() as store:
        bus = PairBus("a")
        joins = {"n": 0}
        join = bus.join

        async def flaky_join(org: str, name: str, sink: RoomSink) -> None:
            joins["n"] += 1
            if joins["n"] == 1:
                raise ConnectionError("the bus fell over")
            await join(org, name, sink)

        bus.join = flaky_join  # type: ignore[method-assign]
        async with RoomManager(store, broadcaster=bus) as manager:
            room = await manager.hold("default", "note")
            await wait_for(lambda: ("default", "note") in bus.sinks, "the replica joined again")
            assert joins["n"] == 2 and room.replica is bus.sinks[("default", "note")]
            assert manager.supervisor.failures.get("replica", 0) >= 1
            manager.unhold(room)
