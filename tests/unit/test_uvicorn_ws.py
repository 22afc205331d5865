"""The lighter queue and flag an accepted uvicorn WebSocket gets (crdt_sync.uvicorn_ws):
messages in order, reading paused only past the bound and resumed at half of it, what
uvicorn had queued (and paused for) carried over, a backed-up socket's writers woken."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from crdt_sync.uvicorn_ws import MAX_QUEUED_MESSAGES, ReceiveQueue, WritableFlag, slim

pytestmark = pytest.mark.anyio


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


class Protocol:
    """The attributes of uvicorn's WebSocketsSansIOProtocol that slim() touches."""

    def __init__(self, queued: list[Any], read_paused: bool) -> None:
        self.transport = Transport()
        self.handshake_complete = True
        self.request: object | None = object()
        self.response: object | None = object()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in queued:
            self.queue.put_nowait(item)
        self.read_paused = read_paused
        self.writable = asyncio.Event()
        self.writable.set()


async def test_messages_come_in_order_and_reading_pauses_only_past_the_bound() -> None:
    protocol = Protocol([], read_paused=False)
    slim(protocol)
    queue = protocol.queue
    assert isinstance(queue, ReceiveQueue)
    assert protocol.read_paused  # uvicorn then neither pauses nor resumes per message
    assert protocol.request is None and protocol.response is None
    for i in range(MAX_QUEUED_MESSAGES - 1):
        queue.put_nowait(i)
    assert protocol.transport.calls == []
    queue.put_nowait(MAX_QUEUED_MESSAGES - 1)
    assert protocol.transport.calls == ["pause"]
    got = [await queue.get() for _ in range(MAX_QUEUED_MESSAGES // 2 - 1)]
    assert protocol.transport.calls == ["pause"]
    got.append(await queue.get())  # down to half the bound: reading again
    assert protocol.transport.calls == ["pause", "resume"]
    while queue.qsize():
        got.append(await queue.get())
    assert got == list(range(MAX_QUEUED_MESSAGES))
    assert not queue.empty()  # to uvicorn, never: it must not resume reading itself


async def test_a_reader_waiting_on_an_empty_queue_is_woken_by_the_next_message() -> None:
    protocol = Protocol([], read_paused=False)
    slim(protocol)
    got: list[Any] = []

    async def read() -> None:
        got.append(await protocol.queue.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert got == [{"type": "websocket.disconnect", "code": 1000}]


@pytest.mark.parametrize("queued", [1, MAX_QUEUED_MESSAGES // 2 + 1])
async def test_what_uvicorn_queued_and_paused_for_is_carried_over(queued: int) -> None:
    protocol = Protocol(list(range(queued)), read_paused=True)
    slim(protocol)
    few = queued <= MAX_QUEUED_MESSAGES // 2
    # A few: reading resumes at once; more: once they are read down to half.
    assert protocol.transport.calls == (["resume"] if few else [])
    got = [await protocol.queue.get() for _ in range(queued)]
    assert got == list(range(queued))
    assert protocol.transport.calls == ["resume"]


async def test_a_protocol_not_as_expected_is_left_alone() -> None:
    protocol = Protocol([], read_paused=False)
    protocol.handshake_complete = False
    slim(protocol)
    assert isinstance(protocol.queue, asyncio.Queue)
    assert protocol.request is not None
    other = Protocol([], read_paused=False)
    del other.read_paused
    slim(other)
    assert isinstance(other.queue, asyncio.Queue)


async def test_the_writable_flag_wakes_every_writer_waiting_for_a_drain() -> None:
    protocol = Protocol([], read_paused=False)
    slim(protocol)
    flag = protocol.writable
    assert isinstance(flag, WritableFlag) and flag.is_set()
    assert await flag.wait()
    flag.clear()
    woken: list[int] = []

    async def writer(i: int) -> None:
        await flag.wait()
        woken.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(writer, i)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        flag.set()
    assert sorted(woken) == [0, 1, 2]
    # A waiter cancelled while waiting leaves nothing behind.
    flag.clear()
    with anyio.move_on_after(0.01):
        await flag.wait()
    assert not flag._waiters


async def test_the_parser_lets_go_of_the_request_headers_and_reads_on() -> None:
    """websockets' own ServerProtocol after a real handshake: the request its parser
    holds loses its headers; frames that follow still parse."""
    import os

    from websockets.server import ServerProtocol

    protocol = Protocol([], read_paused=False)
    conn = protocol.conn = ServerProtocol()
    conn.receive_data(
        b"GET /yjs/doc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nUser-Agent: test\r\n\r\n"
    )
    [request] = conn.events_received()
    conn.send_response(conn.accept(request))
    assert len(request.headers) == 6
    slim(protocol)
    assert len(request.headers) == 0
    payload, mask = b"\x00\x02\x01x", os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    conn.receive_data(bytes((0x82, 0x80 | len(payload))) + mask + masked)
    [frame] = conn.events_received()
    assert frame.data == payload
