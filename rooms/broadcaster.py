"""What crosses nodes for a room: its Yjs updates and awareness changes.

One node's :class:`~rooms.room.Room` fans out to its own connections; a
:class:`Broadcaster` carries the same changes to the other nodes that have the doc
loaded, and hands theirs to a :class:`RoomSink` (the room). Two implementations:

* :class:`LocalBroadcaster`: one process; nothing crosses, nothing arrives.
* ``rooms.redis_broadcaster.RedisBroadcaster``: Redis pub/sub, one channel per doc.

Rules every implementation keeps:

* Every message carries its origin node; a node never delivers its own messages.
* Only committed updates are published (with the store's ``update_id`` and the doc's
  previous one), and only updates and awareness: never a sync step 2, which, relayed
  to a stale replica, could carry a delete set it does not have the structs for.
* Pub/sub may drop messages. The sink detects a gap from ``prev_update_id`` and
  repairs it from the shared store; after an outage the broadcaster calls
  :meth:`RoomSink.bus_resumed` on every joined room so that each re-reads the store.
* Each node holds a lease; when another node's lease lapses, its awareness client
  ids are removed in every room (:meth:`RoomSink.node_gone`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RemoteUpdate:
    """A committed update of a doc, published by the node that committed it."""

    origin: str  # node id
    org: str
    name: str
    update_id: int
    prev_update_id: int
    update: bytes
    actor: str


@dataclass(frozen=True, slots=True)
class RemoteAwareness:
    """An awareness message (y-protocols encoding) relayed by ``origin``."""

    origin: str
    org: str
    name: str
    message: bytes


class RoomSink(Protocol):
    """The receiving end: a loaded room (called on the event loop, never blocking)."""

    def remote_update(self, update: RemoteUpdate) -> None: ...

    def remote_awareness(self, awareness: RemoteAwareness) -> None: ...

    def node_gone(self, node: str) -> None:
        """``node``'s lease lapsed: drop the awareness states that came from it."""
        ...

    def bus_resumed(self) -> None:
        """Messages may have been lost (an outage): catch up from the store."""
        ...


class Broadcaster(Protocol):
    """Fan-out of room changes across nodes."""

    #: This node's id (unique per process in the cluster).
    node_id: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def join(self, org: str, name: str, sink: RoomSink) -> None:
        """Deliver the doc's remote messages to ``sink`` from now on."""
        ...

    async def leave(self, org: str, name: str) -> None: ...

    def publish_update(self, update: RemoteUpdate) -> None:
        """Send a committed update (no wait; dropped and logged while disconnected)."""
        ...

    def publish_awareness(self, awareness: RemoteAwareness) -> None: ...

    def health(self) -> str | None:
        """``None`` while connected; else why not (``/healthz``)."""
        ...


class LocalBroadcaster:
    """One node: there is nobody to tell."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def join(self, org: str, name: str, sink: RoomSink) -> None:
        return None

    async def leave(self, org: str, name: str) -> None:
        return None

    def publish_update(self, update: RemoteUpdate) -> None:
        return None

    def publish_awareness(self, awareness: RemoteAwareness) -> None:
        return None

    def health(self) -> str | None:
        return None
