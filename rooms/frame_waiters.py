"""Long-poll waiters of the frame feed: who waits for an org's next commit.

``GET /sync/v1/delta?live=1`` holds a request until frames past its ``since`` are
committed. It takes :meth:`FrameWaiters.changed` *before* it reads the store, then
waits on it: a commit between the read and the wait has already set the event, so no
frame can slip between them. The node's frame bus calls :meth:`FrameWaiters.publish`
with every org's committed frames (from this node and the others), so a long-poll on
any node wakes for a commit on any node.
"""

from __future__ import annotations

import anyio

from persistence.store import Frame


class TooManyWaiters(Exception):
    """More long-polls are held than the node allows."""


class FrameWaiters:
    """One event per org with waiters, set (and forgotten) at the org's next commit.

    Args:
        limit: Most requests waiting at once on this node (``--max-long-polls``).
        reads: Most of them reading the store at once after a wake-up.
    """

    def __init__(self, limit: int, *, reads: int = 8) -> None:
        self.limit = limit
        self.reads = anyio.CapacityLimiter(reads)
        self.waiting = 0
        self.closed = False
        self._events: dict[str, anyio.Event] = {}

    def changed(self, org: str) -> anyio.Event:
        """Set at ``org``'s next commit after this call (or when the node shuts down)."""
        event = self._events.get(org)
        if event is None:
            event = self._events[org] = anyio.Event()
            if self.closed:
                event.set()
        return event

    def acquire(self) -> None:
        """Count one more waiting request (:meth:`release` it).

        Raises:
            TooManyWaiters: :attr:`limit` requests wait already.
        """
        if self.waiting >= self.limit:
            raise TooManyWaiters(f"{self.waiting} long-polls are waiting (--max-long-polls)")
        self.waiting += 1

    def release(self) -> None:
        self.waiting -= 1

    def publish(self, frames: list[Frame]) -> None:
        """The frame bus delivered committed ``frames``: wake their orgs' waiters."""
        for org in {frame.org for frame in frames}:
            event = self._events.pop(org, None)
            if event is not None:
                event.set()

    def close(self) -> None:
        """Shutdown: wake every waiter (they answer what they have) and every later one."""
        self.closed = True
        events, self._events = self._events, {}
        for event in events.values():
            event.set()
