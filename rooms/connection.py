"""One client connection as a room sees it: a transport and a bounded send queue.

Every message a room fans out is encoded once and the same ``bytes`` object is
queued on each receiver. An idle connection writes a message in the task that
enqueues it (no task switch per receiver per broadcast); only when a write blocks
(the client's socket is backed up) or messages pile up does a sender task exist, and
it ends when the queue is empty again. An idle connection costs no task at all.

When a client stops reading, its writes block, its queue fills, and once it holds
more than ``max_messages`` or ``max_bytes`` the connection is closed with
:attr:`CloseCode.SLOW_CLIENT` and its queue dropped, so it never slows down the
room or grows memory for anyone else (y-sweet drops such frames silently and leaves
the client out of sync; we close instead, and y-websocket reconnects and resyncs).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from .close_codes import CloseCode
from .stats import SAMPLE_EVERY, TRAFFIC
from .stepping import finish, step

log = logging.getLogger(__name__)

_ids = itertools.count(1)

#: RFC 6455 1006: the connection dropped without a close frame (never sent, only noted).
ABNORMAL_CLOSURE = 1006

#: How long a close handshake may take before the transport is abandoned.
CLOSE_TIMEOUT = 2.0


class Transport(Protocol):
    """What a connection needs from a WebSocket (Starlette, a test double, a bridge).

    A transport may also have ``write_now(message) -> bool``: write without suspending
    if the socket takes the message at once (``False``: use :meth:`send`).
    """

    async def send(self, message: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    """A client of a room.

    Args:
        transport: Where messages go.
        actor: Who is connected (``anonymous`` while auth is off).
        max_messages: Queue bound in messages.
        max_bytes: Queue bound in bytes.
    """

    __slots__ = (
        "__weakref__",
        "_close_when_sent",
        "_closed",
        "_idle",
        "_max_bytes",
        "_max_messages",
        "_on_close",
        "_peer_closed",
        "_queue",
        "_queued_bytes",
        "_sample",
        "_sender",
        "_suspended",
        "_transport",
        "_write_now",
        "actor",
        "close_code",
        "close_reason",
        "id",
        "last_received",
        "peer",
        "probe_jitter",
        "probed",
        "room_name",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        actor: str = "anonymous",
        peer: str = "-",
        max_messages: int = 4096,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.id = next(_ids)
        self.actor = actor
        self.peer = peer
        self.room_name = "-"
        self._transport = transport
        self._write_now: Callable[[bytes], bool] | None = getattr(transport, "write_now", None)
        # Made on the first message that has to wait: most connections never need one,
        # and an empty deque is over 600 bytes of every idle connection.
        self._queue: deque[bytes] | None = None
        self._queued_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._sender: asyncio.Task[None] | None = None  # only while writes are pending
        self._suspended: tuple[Any, Any, bytes] | None = None  # a direct write that blocked
        self._idle: asyncio.Future[None] | None = None  # made when someone waits for it
        self._closed: asyncio.Future[None] | None = None  # made when someone waits for it
        self._on_close: Callable[[], None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._peer_closed = False
        self._close_when_sent: tuple[int, str] | None = None
        self.last_received = time.monotonic()
        self.probed = False
        self._sample: tuple[bytes, float] | None = None
        #: Spreads liveness probes: connections that went silent together are not all
        #: probed in the same sweep (a burst of answers would stall the room).
        self.probe_jitter = random.random()

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.room_name!r} {self.actor}>"

    @property
    def closed_by_peer(self) -> bool:
        return self._peer_closed

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    @property
    def queued(self) -> tuple[int, int]:
        """(messages queued, bytes not yet written: queued plus the one being written)."""
        return (len(self._queue) if self._queue else 0), self._queued_bytes

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the connection starts closing (e.g. to stop the
        task reading from the client)."""
        self._on_close = callback

    def enqueue(self, message: bytes, received_at: float | None = None) -> bool:
        """Send ``message``, or queue it; returns ``False`` if the connection is (now) closing.

        Args:
            received_at: When the server received what this relays (monotonic): one
                delivery in :data:`~rooms.stats.SAMPLE_EVERY` is timed up to its write.
        """
        if self.close_code is not None:
            return False
        if received_at is not None:
            TRAFFIC.sample_countdown -= 1
            if TRAFFIC.sample_countdown <= 0:
                TRAFFIC.sample_countdown = SAMPLE_EVERY
                self._sample = (message, received_at)
        queue = self._queue
        if self._sender is None and not queue:
            # Nothing pending: write now, in this task.
            self._send_now(message)
            return self.close_code is None
        if queue is None:
            queue = self._queue = deque()
        queue.append(message)
        self._queued_bytes += len(message)
        # Queued plus the one being written. One message of any size may wait (a big
        # doc's step2 is not a slow client).
        waiting = len(queue) + (self._sender is not None)
        if waiting > self._max_messages or (self._queued_bytes > self._max_bytes and waiting > 1):
            log.warning(
                "conn=%s room=%r actor=%s slow client: %d messages / %d bytes queued, closing",
                self.id,
                self.room_name,
                self.actor,
                len(queue),
                self._queued_bytes,
            )
            TRAFFIC.overflows += 1
            self.close(CloseCode.SLOW_CLIENT, "send queue full: client is not reading")
            return False
        self._start_sender()
        return True

    def write_direct(self, message: bytes) -> bool:
        """Write ``message`` on the socket now, if nothing is waiting before it and the
        transport takes it without suspending; ``False`` (nothing written) otherwise.

        A broadcast's fast path: the caller counts what it wrote in one step
        (:meth:`~rooms.stats.Traffic.count_sent`) and queues the rest with :meth:`enqueue`.
        """
        write_now = self._write_now
        if write_now is None or self.close_code is not None or self._sender is not None:
            return False
        if self._queue:
            return False
        try:
            return write_now(message)
        except Exception as exc:  # the client is gone
            log.debug("conn=%s write failed: %r", self.id, exc)
            self.peer_closed(ABNORMAL_CLOSURE)
            return False

    def _send_now(self, message: bytes) -> None:
        """Run the transport's ``send`` right here; hand it to a sender task if it blocks.

        ASGI servers write without suspending unless the socket is backed up, so the
        coroutine is stepped once: done, it is counted; suspended (on a future, or a
        bare yield), a sender task awaits what it waits for and drives it to the end
        before anything queued after it, so order is kept.
        """
        if self.write_direct(message):
            self._sent(message)
            return
        if self.close_code is not None:  # the direct write found the client gone
            return
        coro = self._transport.send(message)
        try:
            done, waiting_on = step(coro)
        except Exception as exc:  # the client is gone: what a sender would have met
            log.debug("conn=%s send failed: %r", self.id, exc)
            self.peer_closed(ABNORMAL_CLOSURE)
            return
        if done:
            self._sent(message)
            return
        self._suspended = (coro, waiting_on, message)
        TRAFFIC.blocked_writes += 1
        self._queued_bytes += len(message)  # still to be written
        self._start_sender()

    def _start_sender(self) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._drain())

    def close_after(self, message: bytes, code: int, reason: str = "") -> None:
        """Send ``message`` (an error that says why), then close with ``code``."""
        if self.close_code is not None:
            return
        self._close_when_sent = (int(code), reason)
        self.enqueue(message)
        if self._sender is None and self.close_code is None:
            self.close(code, reason)  # it went out at once

    def touch(self) -> None:
        """Note that something arrived from the client (it is alive)."""
        self.last_received = time.monotonic()
        self.probed = False

    def close(self, code: int, reason: str = "") -> None:
        """Drop the queue and close the transport with ``code`` (idempotent)."""
        if self.close_code is not None:
            return
        self.close_code = int(code)
        self.close_reason = reason
        if not self._peer_closed:
            TRAFFIC.count_close(self.close_code)
        if self._queue:
            self._queue.clear()
        self._queued_bytes = 0
        sender = self._sender
        if sender is not None and sender is not asyncio.current_task():
            # It may be blocked on a client that does not read: stop waiting.
            sender.cancel()
        self._settle(self._idle)
        self._settle(self._closed)
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()

    def peer_closed(self, code: int) -> None:
        """The client went away: stop without sending a close frame."""
        self._peer_closed = True
        self.close(code, "closed by peer")

    async def wait_idle(self) -> None:
        """Wait until everything queued was handed to the transport (or it closed)."""
        if self._sender is None or self.close_code is not None:
            return
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._idle)

    async def run(self) -> None:
        """Wait until the connection closes (by the server, or by the peer), let a
        pending write finish, then send the close frame (bounded by ``CLOSE_TIMEOUT``)."""
        if self.close_code is None:
            if self._closed is None:
                self._closed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._closed)
        sender = self._sender
        if sender is not None:
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await asyncio.wait([sender])
        if self._peer_closed:
            return
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._transport.close(self.close_code or 1000, self.close_reason)
            except Exception as exc:  # the peer may be gone already
                log.debug("conn=%s close failed: %r", self.id, exc)

    # -- the sender task (only while writes are pending) -----------------------------

    async def _drain(self) -> None:
        queue = self._queue
        if queue is None:  # started by a write that blocked: what follows queues here
            queue = self._queue = deque()
        transport = self._transport
        try:
            if self._suspended is not None:
                await self._resume_suspended()
            while queue and self.close_code is None:
                message = queue.popleft()
                await transport.send(message)
                self._queued_bytes -= len(message)
                self._sent(message)
        except asyncio.CancelledError:
            if self.close_code is None:  # not our cancellation: the server is stopping
                raise
        except Exception as exc:  # the client is gone
            log.debug("conn=%s send failed: %r", self.id, exc)
            self._sender = None
            self.peer_closed(ABNORMAL_CLOSURE)
            return
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None
        self._settle(self._idle)
        if self._close_when_sent is not None and self.close_code is None:
            self.close(*self._close_when_sent)

    async def _resume_suspended(self) -> None:
        """Drive the write :meth:`_send_now` left suspended to its end."""
        assert self._suspended is not None
        coro, waiting_on, message = self._suspended
        self._suspended = None
        await finish(coro, waiting_on)
        self._queued_bytes -= len(message)
        self._sent(message)

    def _sent(self, message: bytes) -> None:
        TRAFFIC.count_sent(message, 1, None)
        sample = self._sample
        if sample is not None and sample[0] is message:
            self._sample = None
            TRAFFIC.add_delivery(time.monotonic() - sample[1])

    @staticmethod
    def _settle(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)
