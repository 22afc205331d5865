"""How committed SyncFrames reach the frame subscribers of every node.

Whoever commits frames (the record feed, with the :class:`~persistence.store.Committed`
the store returns) publishes them here; the node's :class:`~rooms.feed_hub.FeedHub`
subscribes. The bus delivers each org's frames **in sid order, each once, without
gaps**, whichever node committed them, so that a subscriber cannot tell where a frame
came from:

* :class:`LocalFrameBus`: one node. Frames are delivered as published, through a
  :class:`FrameSequencer` (commits of a pooled backend may be reported out of order).
* ``rooms.redis_frame_bus.RedisFrameBus``: every node publishes its commits on Redis
  and delivers everyone's; a gap (a lost message) is read back from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from persistence.store import Frame

Deliver = Callable[[list[Frame]], None]


class FrameBus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, org: str, frames: list[Frame]) -> None:
        """Frames this node committed, in sid order (called on the event loop)."""
        ...

    def subscribe(self, deliver: Deliver) -> None:
        """Call ``deliver`` with every org's committed frames, in sid order per org."""
        ...

    def health(self) -> str | None: ...


class LocalFrameBus:
    """One node: what is published is delivered, in order, to the subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Deliver] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def subscribe(self, deliver: Deliver) -> None:
        self._subscribers.append(deliver)

    def publish(self, org: str, frames: list[Frame]) -> None:
        if not frames:
            return
        for deliver in list(self._subscribers):
            deliver(frames)

    def health(self) -> str | None:
        return None
