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

import itertools
import logging
import random
import time
from collections import deque
from typing import Protocol

import anyio

from .close_codes import CloseCode
from .stats import SAMPLE_EVERY, TRAFFIC, message_type

#: Delivery latency samples kept until /metrics takes them.
MAX_SAMPLES = 10_000

log = logging.getLogger(__name__)

_ids = itertools.count(1)

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

    async def wait_idle(self) -> None:
        """Wait until everything queued was handed to the transport (or it closed)."""
        await self._idle.wait()

    def close_after(self, message: bytes, code: int, reason: str = "") -> None:
        """Send ``message`` (an error that says why), then close with ``code``."""
        if self.close_code is not None:
            return
        self._close_when_sent = (int(code), reason)
        if not self.enqueue(message) or len(self._queue) == 1:
            self._wake.set()

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
            while queue:
                message = queue.popleft()
                size = len(message)
                self._queued_bytes -= size
                await transport.send(message)
                kind = message_type(message)
                TRAFFIC.sent[kind] += 1
                TRAFFIC.sent_bytes[kind] += size
                sample = self._sample
                if sample is not None and sample[0] is message:
                    self._sample = None
                    if len(TRAFFIC.deliveries) < MAX_SAMPLES:
                        TRAFFIC.deliveries.append(time.monotonic() - sample[1])
            if self.close_code is not None:
                return
            if self._close_when_sent is not None:
                self.close(*self._close_when_sent)
                return
            self._wake = anyio.Event()
            if queue:  # filled while we were creating the event
                continue
            self._idle.set()
            await self._wake.wait()
            if self.close_code is not None:
                return
