"""Per-connection send queue: order, bounds, close semantics."""

from __future__ import annotations

import anyio
import pytest

from rooms.close_codes import CloseCode
from rooms.connection import Connection

pytestmark = pytest.mark.anyio


class RecordingTransport:
    def __init__(self, block: bool = False) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.unblock = anyio.Event()
        if not block:
            self.unblock.set()

    async def send(self, message: bytes) -> None:
        if not self.unblock.is_set():  # as an ASGI server: no yield unless backed up
            await self.unblock.wait()
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_messages_are_sent_in_order_and_shared_not_copied() -> None:
    transport = RecordingTransport()
    conn = Connection(transport)
    shared = b"\x00\x02\x01x"
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        for i in range(100):
            assert conn.enqueue(bytes([i]))
        conn.enqueue(shared)
        with anyio.fail_after(5):
            while len(transport.sent) < 101:
                await anyio.sleep(0.001)
        conn.close(CloseCode.NORMAL, "bye")
    assert transport.sent[:100] == [bytes([i]) for i in range(100)]
    assert transport.sent[100] is shared
    assert transport.closed == (1000, "bye")


async def test_client_that_stops_reading_is_closed_with_4429_and_queue_dropped() -> None:
    transport = RecordingTransport(block=True)
    conn = Connection(transport, max_messages=10, max_bytes=1 << 20)
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        results = [conn.enqueue(b"x" * 10) for _ in range(12)]
    assert results[:10] == [True] * 10
    assert results[11] is False
    assert conn.close_code == CloseCode.SLOW_CLIENT
    assert conn.queued == (0, 0)
    assert transport.closed is not None and transport.closed[0] == 4429


async def test_byte_bound_allows_one_big_message() -> None:
    transport = RecordingTransport(block=True)
    conn = Connection(transport, max_messages=100, max_bytes=1000)
    assert conn.enqueue(b"x" * 5000)  # a big step2 alone is fine
    assert not conn.enqueue(b"y")  # but nothing may pile up behind it
    assert conn.close_code == CloseCode.SLOW_CLIENT


async def test_peer_close_sends_no_close_frame() -> None:
    transport = RecordingTransport()
    conn = Connection(transport)
    conn.peer_closed(1006)
    with anyio.fail_after(5):
        await conn.run()
    assert transport.closed is None
    assert not conn.enqueue(b"late")


class GatedTransport(RecordingTransport):
    """Writes at once, except the messages in ``gated``, which wait for ``unblock``."""

    def __init__(self, gated: set[bytes]) -> None:
        super().__init__(block=True)
        self.gated = gated

    async def send(self, message: bytes) -> None:
        if message in self.gated:
            await self.unblock.wait()
        self.sent.append(message)


async def wait_sent(transport: RecordingTransport, count: int) -> None:
    with anyio.fail_after(5):
        while len(transport.sent) < count:
            await anyio.sleep(0.001)


async def test_an_idle_connection_writes_in_the_enqueuing_task() -> None:
    transport = RecordingTransport()
    conn = Connection(transport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        await anyio.sleep(0.01)  # the sender is idle now
        conn.enqueue(b"now")
        assert transport.sent == [b"now"], "written before enqueue returned"
        conn.close(CloseCode.NORMAL)


async def test_an_inline_write_that_blocks_is_finished_first_in_order() -> None:
    transport = GatedTransport({b"b"})
    conn = Connection(transport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        await anyio.sleep(0.01)
        for message in (b"a", b"b", b"c", b"d"):
            assert conn.enqueue(message)
        assert transport.sent == [b"a"]
        assert conn.queued == (2, 3)  # c and d wait behind the blocked b (counted too)
        transport.unblock.set()
        await wait_sent(transport, 4)
        assert transport.sent == [b"a", b"b", b"c", b"d"]
        with anyio.fail_after(5):
            await conn.wait_idle()
        conn.close(CloseCode.NORMAL)
    assert transport.closed == (1000, "")


async def test_close_while_an_inline_write_is_blocked_stops_it() -> None:
    transport = GatedTransport({b"stuck"})
    conn = Connection(transport)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run)
            await anyio.sleep(0.01)
            conn.enqueue(b"stuck")
            conn.close(CloseCode.SLOW_CLIENT, "not reading")
    assert transport.sent == []
    assert transport.closed == (4429, "not reading")


class FailingTransport(RecordingTransport):
    async def send(self, message: bytes) -> None:
        raise ConnectionResetError("peer gone")


async def test_a_write_to_a_vanished_client_ends_the_connection_quietly() -> None:
    transport = FailingTransport()
    conn = Connection(transport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run)
        await anyio.sleep(0.01)
        assert conn.enqueue(b"x") is False
    assert conn.closed_by_peer
    assert transport.closed is None
