"""Traffic counters kept on the hot paths as plain integers.

A message relayed to 200 clients is counted 200 times, so counting must cost no
more than an addition: no locks, no label lookups. ``/metrics`` reads these at
scrape time (``crdt_sync.metrics``). One process, one event loop: no races.
"""

from __future__ import annotations

import random
import time

#: Message types, by the index :func:`message_type` returns.
MESSAGE_TYPES = (
    "sync_step1",
    "sync_step2",
    "sync_update",
    "awareness",
    "auth",
    "query_awareness",
    "frames",
    "other",
)
OTHER = 7
_FIRST_BYTE = {1: 3, 2: 4, 3: 5, 0x5B: 6}  # y-websocket types; '[' starts a frame array

#: One delivery in this many has its latency recorded.
SAMPLE_EVERY = 16

#: Delivery latency samples kept until /metrics takes them.
MAX_SAMPLES = 10_000


def message_type(message: bytes) -> int:
    """The index in :data:`MESSAGE_TYPES` of a y-websocket message (or a frame batch)."""
    if not message:
        return OTHER
    first = message[0]
    if first == 0:
        sub = message[1] if len(message) > 1 else 255
        return sub if sub <= 2 else OTHER
    return _FIRST_BYTE.get(first, OTHER)


class Traffic:
    """Messages and bytes in and out by type; closes by code; sampled delivery latency."""

    __slots__ = (
        "blocked_writes",
        "closes",
        "deliveries",
        "overflows",
        "received",
        "received_bytes",
        "sample_countdown",
        "sent",
        "sent_bytes",
    )

    def __init__(self) -> None:
        n = len(MESSAGE_TYPES)
        self.received = [0] * n
        self.received_bytes = [0] * n
        self.sent = [0] * n
        self.sent_bytes = [0] * n
        self.overflows = 0  # connections closed because their queue was full (4429)
        self.blocked_writes = 0  # writes that waited for a client's socket to drain
        self.closes: dict[int, int] = {}  # server-initiated closes by code
        # Seconds from receiving an update to writing it to a receiver's socket,
        # one in SAMPLE_EVERY deliveries; drained by /metrics.
        self.deliveries: list[float] = []
        self.sample_countdown = random.randrange(SAMPLE_EVERY)

    def count_received(self, message: bytes) -> None:
        kind = message_type(message)
        self.received[kind] += 1
        self.received_bytes[kind] += len(message)

    def count_sent(self, message: bytes, times: int, received_at: float | None) -> None:
        """``message`` written to ``times`` sockets at once (a broadcast's direct writes),
        counted in one step; ``received_at``: when what it relays came in, to sample."""
        kind = message_type(message)
        self.sent[kind] += times
        self.sent_bytes[kind] += times * len(message)
        if received_at is not None:
            self.sample_countdown -= times
            if self.sample_countdown <= 0:
                self.sample_countdown = SAMPLE_EVERY
                self.add_delivery(time.monotonic() - received_at)

    def add_delivery(self, seconds: float) -> None:
        """One sampled delivery latency (kept until /metrics takes them, bounded)."""
        if len(self.deliveries) < MAX_SAMPLES:
            self.deliveries.append(seconds)

    def count_close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1

    def take_deliveries(self) -> list[float]:
        taken, self.deliveries = self.deliveries, []
        return taken


#: The node's counters.
TRAFFIC = Traffic()
