"""Reconnect delays: capped exponential backoff with full jitter.

"Full jitter" (AWS architecture blog, *Exponential Backoff And Jitter*): the n-th
delay is uniform in ``[0, min(cap, base * 2**n)]``, so clients that lost the same
server at the same instant spread their reconnects instead of arriving in lock-step.
The attempt count resets once a connection has stayed up for ``stable_after``
seconds (a server that accepts and drops at once keeps backing off).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for reconnect attempts.

    Args:
        base: The ceiling of the first delay, in seconds.
        cap: The largest ceiling.
        stable_after: Seconds a connection must stay up before the attempts reset.
        rng: Where the jitter comes from (seeded in tests).
    """

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    _connected_at: float | None = None

    def next_delay(self, *, at_least: float = 0.0) -> float:
        """The delay before the next attempt (and count it). ``at_least``: a server's
        ``Retry-After`` or a rate-limit close, honoured as a floor."""
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return max(at_least, self.rng.uniform(0, ceiling))

    def connected(self) -> None:
        """A connection is up (the attempts reset once it has been up long enough)."""
        self._connected_at = time.monotonic()

    def disconnected(self) -> None:
        """The connection ended: reset the attempts if it had been stable."""
        if self._connected_at is not None:
            if time.monotonic() - self._connected_at >= self.stable_after:
                self.attempt = 0
            self._connected_at = None
