"""One client connection as a room sees it: a transport and a bounded send queue.

Every message a room fans out is encoded once and the same ``bytes`` object is
queued on each receiver. A single sender task per connection drains the queue
into the transport. When a client stops reading, its transport blocks, its queue
fills, and once it holds more than ``max_messages`` or ``max_bytes`` the
connection is closed with :attr:`CloseCode.SLOW_CLIENT` and its queue dropped,
so it never slows down the room or grows memory for anyone else (y-sweet drops
such frames silently and leaves the client out of sync; we close instead, and
y-websocket reconnects and resyncs).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from typing import Any, Protocol

import anyio

from .close_codes import CloseCode
from .stats import SAMPLE_EVERY, TRAFFIC, message_type

#: Delivery latency samples kept until /metrics takes them.
MAX_SAMPLES = 10_000

log = logging.getLogger(__name__)

_ids = itertools.count(1)

#: RFC 6455 1006: the connection dropped without a close frame (never sent, only noted).
ABNORMAL_CLOSURE = 1006

#: How long a close handshake may take before the transport is abandoned.
CLOSE_TIMEOUT = 2.0


class Transport(Protocol):
    """What a connection needs from a WebSocket (Starlette, a test double, a bridge)."""

    async def send(self, message: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    """A client of a room.

    Args:
        transport: Where queued messages go.
        actor: Who is connected (``anonymous`` while auth is off).
        max_messages: Queue bound in messages.
        max_bytes: Queue bound in bytes.
    """

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
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._send_scope: anyio.CancelScope | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._peer_closed = False
        self._close_when_sent: tuple[int, str] | None = None
        self._waiting = False  # the sender task waits for work: enqueue may write itself
        self._suspended: tuple[Any, Any, bytes] | None = None  # an inline send that blocked
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
        """(messages, bytes) waiting to be sent."""
        return len(self._queue), self._queued_bytes

    def enqueue(self, message: bytes, received_at: float | None = None) -> bool:
        """Queue ``message``; returns ``False`` if the connection is (now) closing.

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
        if self._waiting and not queue:
            # The sender is idle: write now, in this task, instead of waking it.
            self._send_inline(message)
            return self.close_code is None
        queue.append(message)
        self._queued_bytes += len(message)
        # One message of any size may wait (a big doc's step2 is not a slow client).
        if len(queue) > self._max_messages or (
            self._queued_bytes > self._max_bytes and len(queue) > 1
        ):
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
        if len(queue) == 1:
            self._wake.set()
            if self._idle.is_set():
                self._idle = anyio.Event()
        return True

    def _send_inline(self, message: bytes) -> None:
        """Run the transport's ``send`` right here; hand it to the sender if it blocks.

        With an idle sender, waking its task for every message costs more than the
        write itself (a task switch per receiver per broadcast). ASGI servers write
        without suspending unless the socket is backed up, so the coroutine is stepped
        once: done, it is counted; suspended (on a future, or a bare yield), the
        sender task awaits what it waits for and drives it to the end, before anything
        queued after it, so order is kept.
        """
        coro = self._transport.send(message)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            self._sent(message)
            return
        except Exception as exc:  # the client is gone: what the sender would have met
            log.debug("conn=%s send failed: %r", self.id, exc)
            self.peer_closed(ABNORMAL_CLOSURE)
            return
        self._suspended = (coro, waiting_on, message)
        self._waiting = False  # everything after this one queues behind it
        self._idle = anyio.Event()
        self._wake.set()

    async def _resume_suspended(self) -> None:
        """Drive the send :meth:`_send_inline` left suspended to its end."""
        assert self._suspended is not None
        coro, waiting_on, message = self._suspended
        self._suspended = None
        try:
            while True:
                if waiting_on is None:
                    await asyncio.sleep(0)
                else:
                    # As asyncio's Task does for the future a coroutine yields: wait for
                    # it, then resume the coroutine, which reads its outcome itself.
                    waiting_on._asyncio_future_blocking = False
                    try:
                        await waiting_on
                    except BaseException:
                        pass  # the coroutine reads the outcome (and re-raises) itself
                try:
                    waiting_on = coro.send(None)
                except StopIteration:
                    break
        finally:
            coro.close()
        self._sent(message)

    def _sent(self, message: bytes) -> None:
        size = len(message)
        kind = message_type(message)
        TRAFFIC.sent[kind] += 1
        TRAFFIC.sent_bytes[kind] += size
        sample = self._sample
        if sample is not None and sample[0] is message:
            self._sample = None
            if len(TRAFFIC.deliveries) < MAX_SAMPLES:
                TRAFFIC.deliveries.append(time.monotonic() - sample[1])

    async def wait_idle(self) -> None:
        """Wait until everything queued was handed to the transport (or it closed)."""
        await self._idle.wait()

    def close_after(self, message: bytes, code: int, reason: str = "") -> None:
        """Send ``message`` (an error that says why), then close with ``code``."""
        if self.close_code is not None:
            return
        self._close_when_sent = (int(code), reason)
        self.enqueue(message)
        self._wake.set()  # the sender closes once the message is out (or was written inline)

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
        self._queue.clear()
        self._queued_bytes = 0
        self._idle.set()
        if self._send_scope is not None:
            # The sender may be blocked on a client that does not read: stop waiting.
            self._send_scope.cancel()
        self._wake.set()

    def peer_closed(self, code: int) -> None:
        """The client went away: stop without sending a close frame."""
        self._peer_closed = True
        self.close(code, "closed by peer")

    async def run(self) -> None:
        """Drain the queue into the transport until closed, then close the transport."""
        with anyio.CancelScope() as scope:
            self._send_scope = scope
            if self.close_code is None:
                await self._drain()
        self._send_scope = None
        await self._close_transport()

    async def _close_transport(self) -> None:
        self._send_scope = None
        if self._peer_closed or self.close_code is None:
            return
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._transport.close(self.close_code, self.close_reason)
            except Exception as exc:  # the peer may be gone already
                log.debug("conn=%s close failed: %r", self.id, exc)

    async def _drain(self) -> None:
        queue = self._queue
        transport = self._transport
        while True:
            if self._suspended is not None:
                await self._resume_suspended()
            while queue:
                message = queue.popleft()
                self._queued_bytes -= len(message)
                await transport.send(message)
                self._sent(message)
            if self.close_code is not None:
                return
            if self._close_when_sent is not None:
                self.close(*self._close_when_sent)
                return
            self._wake = anyio.Event()
            if queue:  # filled while we were creating the event
                continue
            self._idle.set()
            self._waiting = True
            try:
                await self._wake.wait()
            finally:
                self._waiting = False
            if self.close_code is not None:
                return
