"""The relay hot path: a broadcast writes straight to idle sockets and counts them in one
step; an update's store append is shielded only when it has to wait for room, and a
reader cancelled while it waits still logs the update."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint
from pycrdt import Doc, Text

from persistence.sqlite import SQLiteStore
from rooms.codec import encode_sync_update
from rooms.connection import Connection
from rooms.room import Room
from rooms.stats import MESSAGE_TYPES, SAMPLE_EVERY, TRAFFIC
from rooms.stepping import finish, step
from tests.unit.live_node import PausingStore

pytestmark = pytest.mark.anyio

WAIT = 10
SYNC_UPDATE = MESSAGE_TYPES.index("sync_update")


class DirectTransport:
    """A socket that takes every write at once (uvicorn's direct path) until ``full``;
    then the ASGI ``send`` waits until ``drained``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.sent: list[bytes] = []
        self.full = False
        self.drained = anyio.Event()

    def write_now(self, message: bytes) -> bool:
        if self.full:
            return False
        self.written.append(message)
        return True

    async def send(self, message: bytes) -> None:
        await self.drained.wait()
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None: ...


def edits(n: int) -> list[bytes]:
    src = Doc()
    text = src.get("body", type=Text)
    updates: list[bytes] = []
    src.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"{i} "
    return updates


# -- stepping -------------------------------------------------------------------------


async def test_step_finishes_a_coroutine_that_does_not_suspend() -> None:
    async def at_once() -> int:
        return 42

    assert step(at_once()) == (True, 42)


async def test_finish_drives_a_suspended_coroutine_to_its_result_or_error() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    async def waits() -> int:
        await checkpoint()  # a bare yield first
        return await future + 1

    coro = waits()
    done, waiting_on = step(coro)
    assert not done
    loop.call_soon(future.set_result, 1)
    assert await finish(coro, waiting_on) == 2

    failing: asyncio.Future[int] = loop.create_future()

    async def fails() -> int:
        return await failing

    coro = fails()
    done, waiting_on = step(coro)
    assert not done and waiting_on is failing
    loop.call_soon(failing.set_exception, ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        await finish(coro, waiting_on)


# -- broadcast --------------------------------------------------------------------------


async def test_a_broadcast_writes_idle_sockets_directly_and_queues_behind_a_backlog(
    tmp_path: Path,
) -> None:
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "hot/1", store)
        await room.load()
        transports = [DirectTransport() for _ in range(4)]
        conns = [Connection(t) for t in transports]
        for conn in conns:
            room.join(conn)  # each is sent the room's sync step 1
        joined = [len(t.written) for t in transports]
        before = TRAFFIC.sent[SYNC_UPDATE], TRAFFIC.sent_bytes[SYNC_UPDATE]
        first, second = (encode_sync_update(u) for u in edits(2))
        # conns[3]'s socket is backed up: its copy waits in an ASGI send (a sender task).
        transports[3].full = True
        assert room.broadcast(first, exclude=conns[0]) == 3
        new = [len(t.written) - n for t, n in zip(transports, joined, strict=True)]
        assert new == [0, 1, 1, 0]
        assert transports[1].written[-1] is first  # the same bytes, not a copy
        # Its socket takes writes again, but the next message must not pass the waiting one.
        transports[3].full = False
        assert room.broadcast(second, exclude=conns[0]) == 3
        assert transports[3].written == transports[3].written[: joined[3]]
        assert conns[3].queued[0] == 1
        transports[3].drained.set()
        with anyio.fail_after(WAIT):
            while len(transports[3].sent) < 2:
                await anyio.sleep(0.001)
        assert transports[3].sent == [first, second]
        # Counted once per copy, direct or queued.
        assert TRAFFIC.sent[SYNC_UPDATE] - before[0] == 6
        assert TRAFFIC.sent_bytes[SYNC_UPDATE] - before[1] == 3 * (len(first) + len(second))


async def test_direct_writes_are_sampled_for_delivery_latency(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "hot/2", store)
        await room.load()
        for _ in range(SAMPLE_EVERY):
            room.join(Connection(DirectTransport()))
        TRAFFIC.take_deliveries()
        TRAFFIC.sample_countdown = SAMPLE_EVERY
        received_at = asyncio.get_running_loop().time() - 0.5  # monotonic, as the reader's
        room.broadcast(b"\x00\x02\x01x", received_at=received_at)
        samples = TRAFFIC.take_deliveries()
        assert len(samples) == 1 and samples[0] >= 0.5


# -- the log ------------------------------------------------------------------------------


async def test_a_reader_cancelled_while_its_append_waits_for_room_still_logs(
    tmp_path: Path,
) -> None:
    updates = edits(2)
    async with PausingStore(tmp_path / "db", max_queued_bytes=1) as store:
        room = Room("default", "hot/3", store)
        await room.load()
        conn = Connection(DirectTransport())
        room.join(conn)
        release = threading.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(store.hold_writer, release)
            # The held op fills the queue: the update has to wait for room, and its reader
            # is cancelled meanwhile.
            reader = anyio.CancelScope()

            async def read_second() -> None:
                with reader:
                    await room.on_update(conn, updates[0], encode_sync_update(updates[0]))

            tg.start_soon(read_second)
            await wait_all_tasks_blocked()
            reader.cancel()
            await wait_all_tasks_blocked()
            assert room.logged_since_snapshot == 0  # still waiting for room, shielded
            release.set()
        assert room.logged_since_snapshot == 1
        # Relayed before it was logged; the next one (room again) is queued at once.
        await room.on_update(conn, updates[1], encode_sync_update(updates[1]))
        assert room.logged_since_snapshot == 2
        await store.flush()
        stored = await store.load("default", "hot/3")
        assert stored is not None and len(stored.updates) == 2
        copy = Doc()
        for update in stored.updates:
            copy.apply_update(update)
        assert str(copy.get("body", type=Text)) == "0 1 "
