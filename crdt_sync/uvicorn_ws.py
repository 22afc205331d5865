"""What an open WebSocket keeps of uvicorn's sans-I/O protocol, made lighter.

uvicorn builds every WebSocket connection for any app: the handshake's request and
response stay on it (and websockets' parser keeps the request's headers), its
receive queue is an ``asyncio.Queue`` (four deques, about 2.5 KiB even when empty)
and its ``writable`` flag an ``asyncio.Event`` (one more).
It also pauses reading the socket after every message and resumes once the app has
taken it: two transport calls, and on uvloop two epoll changes, per message received.

:func:`slim` swaps these, on a connection the app has accepted, for what one reader
needs: a :class:`ReceiveQueue` that pauses reading only once
:data:`MAX_QUEUED_MESSAGES` wait (websockets' own default bound), and a
:class:`WritableFlag`. Everything uvicorn calls on them behaves as before; what it
would pause and resume per message is left to the queue (``read_paused`` is kept set
so that uvicorn leaves the transport alone, and cleared by uvicorn itself when the app
closes, which resumes reading for the close handshake).
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request

#: Messages received and not yet read by the app before the socket stops being read
#: (TCP then pushes back on the client); reading resumes at half of it.
MAX_QUEUED_MESSAGES = 16


class ReceiveQueue:
    """``put_nowait`` / ``get`` / ``empty`` of ``asyncio.Queue`` for one reader, with
    the socket's flow control."""

    __slots__ = ("_items", "_paused", "_protocol", "_waiter")

    def __init__(self, protocol: Any, items: list[Any]) -> None:
        self._protocol = protocol
        self._items = items
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def put_nowait(self, item: Any) -> None:
        items = self._items
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(items) >= MAX_QUEUED_MESSAGES and not self._paused:
            self._paused = True
            self._protocol.transport.pause_reading()

    async def get(self) -> Any:
        items = self._items
        while not items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        item = items.pop(0)
        if self._paused and len(items) <= MAX_QUEUED_MESSAGES // 2:
            self._paused = False
            self._protocol.transport.resume_reading()
        return item

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        """Always ``False`` to uvicorn: it resumes reading when its queue is empty, and
        this queue decides that itself (see :meth:`get`)."""
        return False


class WritableFlag:
    """``asyncio.Event``'s ``set`` / ``clear`` / ``is_set`` / ``wait``, with its
    waiters made only while someone waits (the socket is backed up)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, is_set: bool) -> None:
        self._set = is_set
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


def slim(protocol: Any) -> None:
    """Lighten an accepted connection of uvicorn's ``WebSocketsSansIOProtocol``.

    Called by the app in the task reading it, right after the handshake: what is
    already queued moves over in order. A protocol not as expected (another uvicorn
    version) is left as it is.
    """
    if not getattr(protocol, "handshake_complete", False):
        return
    for attribute in ("request", "response"):
        # Read only to send the accept; never again.
        if hasattr(protocol, attribute):
            setattr(protocol, attribute, None)
    _drop_request_headers(getattr(protocol, "conn", None))
    queue = getattr(protocol, "queue", None)
    if (
        type(queue) is asyncio.Queue
        and not getattr(queue, "_getters", True)
        and hasattr(protocol, "read_paused")
        and hasattr(protocol, "transport")
    ):
        items = list(queue._queue)  # type: ignore[attr-defined]
        receive_queue = ReceiveQueue(protocol, items)
        if protocol.read_paused:
            # uvicorn paused reading for what it queued: resumed now, or by the new
            # queue once that is read.
            if len(items) <= MAX_QUEUED_MESSAGES // 2:
                protocol.transport.resume_reading()
            else:
                receive_queue._paused = True
        protocol.read_paused = True  # to uvicorn: paused, so it leaves reading alone
        protocol.queue = receive_queue
    writable = getattr(protocol, "writable", None)
    if type(writable) is asyncio.Event and not getattr(writable, "_waiters", True):
        protocol.writable = WritableFlag(writable.is_set())


def _drop_request_headers(conn: Any) -> None:
    """Empty the headers of the handshake request websockets' ``ServerProtocol`` still
    holds: a local variable of its parser, which goes on reading frames in the same
    generator for the life of the connection (about 2 KiB of every idle connection).
    Nothing reads them after the handshake: uvicorn copied them into the ASGI scope."""
    frame = getattr(getattr(conn, "parser", None), "gi_frame", None)
    if frame is None:
        return
    request = frame.f_locals.get("request")
    if isinstance(request, Request) and isinstance(request.headers, Headers):
        request.headers = Headers()
