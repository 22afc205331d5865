"""How committed SyncFrames reach the frame subscribers of every node.

Whoever commits frames (the record feed, with the :class:`~persistence.store.Committed`
the store returns) publishes them here; the node's :class:`~rooms.feed_hub.FeedHub`
subscribes. The bus delivers each org's frames **in sid order, each once, without
gaps**, whichever node committed them, so that a subscriber cannot tell where a frame
came from:

* :class:`LocalFrameBus`: one node. Frames are delivered as published; given the
  store's ``read_since``, through a :class:`~rooms.frame_sequencer.FrameSequencer`
  (commits of a pooled backend may be reported out of order).
* ``rooms.redis_frame_bus.RedisFrameBus``: every node publishes its commits on Redis
  and delivers everyone's; a gap (a lost message) is read back from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from persistence.store import Frame

from .frame_sequencer import FrameSequencer, ReadSince

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

    def follow(self, org: str, since: int) -> None:
        """A subscriber of ``org`` has read the store up to ``since``: if the bus has
        not seen the org yet, deliver its frames from ``since`` on (without it, the
        first frames the bus sees set the org's starting point)."""
        ...

    def health(self) -> str | None: ...


class LocalFrameBus:
    """One node: what is published is delivered, in order, to the subscribers.

    Args:
        read_since: The store's committed frames of an org after a sid; given, the
            frames go through a :class:`FrameSequencer` (a gap, such as a commit
            reported late, waits ``gap_wait`` s and is then read from the store).
            Without it they are delivered as published.
    """

    def __init__(self, read_since: ReadSince | None = None, *, gap_wait: float = 0.2) -> None:
        self._subscribers: list[Deliver] = []
        self._sequencer = (
            None
            if read_since is None
            else FrameSequencer(read_since, self._fan_out, gap_wait=gap_wait)
        )

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._sequencer is not None:
            await self._sequencer.close()

    def subscribe(self, deliver: Deliver) -> None:
        self._subscribers.append(deliver)

    def publish(self, org: str, frames: list[Frame]) -> None:
        if not frames:
            return
        if self._sequencer is None:
            self._fan_out(frames)
        else:
            self._sequencer.push(org, frames)

    def follow(self, org: str, since: int) -> None:
        if self._sequencer is not None:
            self._sequencer.follow(org, since)

    def health(self) -> str | None:
        return None

    def _fan_out(self, frames: list[Frame]) -> None:
        for deliver in list(self._subscribers):
            deliver(frames)
