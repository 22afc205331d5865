"""Backpressure on catch-up reads: ``GET /sync/v1/delta`` and ``GET /sync/v1/records``.

Two limits, as sync engines do to keep a reconnect storm from flattening the store:
at most one request per client per ``--delta-min-interval-ms``, and at most
``--delta-max-concurrency`` requests in flight per tenant. Past either, the request
is refused at once with 429 and ``Retry-After``; nothing queues up in the server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Throttled(Exception):
    """Refused: retry after :attr:`retry_after` seconds."""

    def __init__(self, retry_after: float, detail: str) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.detail = detail

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` takes whole seconds (RFC 9110); never 0, which invites a storm."""
        return str(max(1, math.ceil(self.retry_after)))


class ReadThrottle:
    """Per-client interval and per-tenant concurrency limits.

    Args:
        min_interval_ms: Least time between two requests of one client (0: no limit).
        max_concurrency: Most requests in flight per tenant.
        max_clients: Clients remembered; older entries are forgotten first.
    """

    def __init__(
        self, min_interval_ms: float, max_concurrency: int, *, max_clients: int = 100_000
    ) -> None:
        self.min_interval = min_interval_ms / 1000
        self.max_concurrency = max_concurrency
        self.max_clients = max_clients
        self._last: dict[tuple[str, str], float] = {}
        self._in_flight: dict[str, int] = {}
        self.refused = 0

    @contextmanager
    def request(self, org: str, client: str, *, interval: bool = True) -> Iterator[None]:
        """Admit one request of ``client`` (in tenant ``org``) or raise :class:`Throttled`.

        ``interval=False``: not held to the per-client interval (a long-poll that comes
        back as soon as it was answered is following the feed, not storming it); the
        tenant's concurrency still applies, for the read only.
        """
        now = time.monotonic()
        key = (org, client)
        interval = interval and self.min_interval > 0
        if interval:
            last = self._last.get(key)
            if last is not None and now - last < self.min_interval:
                self.refused += 1
                wait = self.min_interval - (now - last)
                raise Throttled(
                    wait,
                    f"at most one request per {self.min_interval * 1000:g} ms per client; "
                    f"retry in {wait * 1000:.0f} ms",
                )
        in_flight = self._in_flight.get(org, 0)
        if in_flight >= self.max_concurrency:
            self.refused += 1
            raise Throttled(
                self.min_interval or 0.1,
                f"{in_flight} requests of this tenant are in flight (at most "
                f"{self.max_concurrency})",
            )
        if interval:
            self._last.pop(key, None)
            self._last[key] = now  # re-inserted: the dict stays ordered oldest first
            if len(self._last) > self.max_clients:
                self._forget(now)
        self._in_flight[org] = in_flight + 1
        try:
            yield
        finally:
            left = self._in_flight[org] - 1
            if left:
                self._in_flight[org] = left
            else:
                del self._in_flight[org]

    def _forget(self, now: float) -> None:
        horizon = now - self.min_interval
        for key, last in list(self._last.items()):
            if last >= horizon and len(self._last) <= self.max_clients:
                break
            del self._last[key]
