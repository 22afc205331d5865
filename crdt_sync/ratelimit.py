"""Per-principal limits: a sliding-window rate limiter and a connection counter.

Sliding window, strict, O(1) per call
-------------------------------------
Each key keeps ``buckets + 1`` counters of width ``g = window / buckets``, the
current one and the ``buckets`` before it. An event at time ``t`` (bucket
``b = floor(t / g)``) is allowed iff the events already allowed in buckets
``b - buckets .. b`` number fewer than ``limit``. Those buckets cover every
instant in ``(t - window, t]``, so the guarantee is exact, not approximate:

    **at most ``limit`` events are allowed in any half-open interval of length
    ``window``.**

The price of O(1) memory is on the other side: the check looks back up to
``window + g``, so a client sending flat out regains its budget up to ``g`` later
than an exact log would (with the default 10 buckets, 10 % of the window).
``retry_after`` says when the oldest counted bucket leaves the look-back.

Memory: ``buckets + 1`` ints per key; keys idle for longer than ``window + g`` are
dropped (amortised: a few per call, oldest first), and at most ``max_keys`` are
tracked; past that the least recently used is forgotten, which at worst gives
that key a fresh budget (it cannot make anyone else's limit stricter).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


class _Window:
    __slots__ = ("counts", "head", "last_seen", "total")

    def __init__(self, size: int, head: int) -> None:
        self.counts = [0] * size  # ring: bucket i lives at counts[i % size]
        self.head = head  # the newest bucket index counted
        self.total = 0
        self.last_seen = 0.0


class SlidingWindowLimiter:
    """At most ``limit`` events per ``window`` seconds per key.

    Args:
        limit: Events allowed in any window (0: nothing is allowed).
        window: Window length in seconds.
        buckets: Counters per window: more is closer to an exact log (less
            over-refusal), fewer is less memory.
        max_keys: Most keys tracked at once.
    """

    def __init__(
        self, limit: int, window: float, *, buckets: int = 10, max_keys: int = 100_000
    ) -> None:
        if limit < 0 or window <= 0 or buckets < 1 or max_keys < 1:
            raise ValueError("need limit >= 0, window > 0, buckets >= 1, max_keys >= 1")
        self.limit = limit
        self.window = window
        self.buckets = buckets
        self.granularity = window / buckets
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Window] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._keys)

    def _bucket(self, now: float) -> int:
        return math.floor(now / self.granularity)

    def _advance(self, win: _Window, bucket: int) -> None:
        """Zero the buckets that fell out of the look-back as time moved to ``bucket``."""
        size = self.buckets + 1
        if bucket <= win.head:
            return  # same bucket, or a clock that stepped back: keep counting
        for i in range(win.head + 1, min(bucket, win.head + size) + 1):
            slot = i % size
            win.total -= win.counts[slot]
            win.counts[slot] = 0
        win.head = bucket

    def _expire(self, now: float) -> None:
        horizon = now - self.window - self.granularity
        for _ in range(2):  # amortised O(1): at most two idle keys per call
            if not self._keys:
                return
            key, win = next(iter(self._keys.items()))
            if win.last_seen > horizon:
                return
            del self._keys[key]

    def allow(self, key: Hashable, now: float) -> tuple[bool, float]:
        """Count one event of ``key`` at ``now`` (monotonic seconds) if within the limit.

        Returns:
            ``(True, 0.0)`` if allowed, else ``(False, retry_after_seconds)``.
        """
        self._expire(now)
        bucket = self._bucket(now)
        win = self._keys.get(key)
        if win is None:
            win = _Window(self.buckets + 1, bucket)
            self._keys[key] = win
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
            self._advance(win, bucket)
        win.last_seen = max(win.last_seen, now)
        if win.total < self.limit:
            slot = win.head % (self.buckets + 1)
            win.counts[slot] += 1
            win.total += 1
            return True, 0.0
        self.refused += 1
        return False, self._retry_after(win, now)

    def _retry_after(self, win: _Window, now: float) -> float:
        """Seconds until enough of the oldest buckets leave the look-back."""
        if self.limit == 0:
            return self.window
        size = self.buckets + 1
        excess = win.total - self.limit + 1
        for i in range(win.head - self.buckets, win.head + 1):
            excess -= win.counts[i % size]
            if excess <= 0:
                # bucket i is last counted while the current bucket is i + buckets
                return self._until_bucket(i + size, now)
        return self.window  # unreachable while total is the sum of the counts

    def _until_bucket(self, bucket: int, now: float) -> float:
        """Seconds from ``now`` to the start of ``bucket``, rounded so that
        ``now + result`` really falls in it (float division may land one below)."""
        at = max(now, bucket * self.granularity)
        for _ in range(64):  # a few ulps at most
            if self._bucket(at) >= bucket:
                break
            at = math.nextafter(at, math.inf)
        wait = at - now
        for _ in range(64):  # the subtraction may round down, too
            if now + wait >= at:
                break
            wait = math.nextafter(wait, math.inf)
        return wait


class ConnectionLimitExceeded(Exception):
    """Too many open connections for one actor or one IP."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(f"more than {limit} connections per {kind}")
        self.kind = kind
        self.limit = limit


@dataclass(eq=False, slots=True)
class ConnectionLease:
    """One admitted connection; :meth:`release` (idempotent) gives its slots back."""

    limiter: ConnectionLimiter
    actor: Hashable | None
    ip: str | None
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._release(self.actor, self.ip)

    def __enter__(self) -> ConnectionLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ConnectionLimiter:
    """Open connections per actor and per IP; memory is one entry per key with any open.

    Args:
        per_actor: Most connections of one actor (key, e.g. ``(org, actor)``).
        per_ip: Most connections from one client address.
    """

    def __init__(self, per_actor: int, per_ip: int) -> None:
        self.per_actor = per_actor
        self.per_ip = per_ip
        self._actors: dict[Hashable, int] = {}
        self._ips: dict[str, int] = {}

    def open_for(self, *, actor: Hashable | None = None, ip: str | None = None) -> int:
        """Connections open for ``actor`` or for ``ip``."""
        if actor is not None:
            return self._actors.get(actor, 0)
        return self._ips.get(ip, 0) if ip is not None else 0

    @property
    def tracked(self) -> int:
        return len(self._actors) + len(self._ips)

    def acquire(self, actor: Hashable | None, ip: str | None) -> ConnectionLease:
        """Admit one connection of ``actor`` (``None`` while open: IP only) from ``ip``.

        Raises:
            ConnectionLimitExceeded: either count is at its limit (nothing is taken).
        """
        if actor is not None and self._actors.get(actor, 0) >= self.per_actor:
            raise ConnectionLimitExceeded("actor", self.per_actor)
        if ip is not None and self._ips.get(ip, 0) >= self.per_ip:
            raise ConnectionLimitExceeded("ip", self.per_ip)
        if actor is not None:
            self._actors[actor] = self._actors.get(actor, 0) + 1
        if ip is not None:
            self._ips[ip] = self._ips.get(ip, 0) + 1
        return ConnectionLease(self, actor, ip)

    def _release(self, actor: Hashable | None, ip: str | None) -> None:
        for counts, key in ((self._actors, actor), (self._ips, ip)):
            if key is None:
                continue
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
