"""What a room tells the rest of the node: the hooks of the SyncFrame feed.

``rooms`` knows nothing of records or frames; the feed (in ``crdt_sync``) registers
one :class:`RoomListener` with the :class:`~rooms.manager.RoomManager`, which hands
it to every room. Synchronous hooks run inside the room's message handling, so they
must be cheap (mark something dirty, never I/O).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .room import Origin, Room


class RoomListener(Protocol):
    async def room_loaded(self, room: Room) -> None:
        """The room's stored state is loaded (once per load, before it is unloaded)."""
        ...

    def room_changing(self, room: Room, actor: str | None, origin: Origin) -> None:
        """An update by ``actor`` from ``origin`` (a client, HTTP, another node) is
        about to be applied.

        What others changed before it can be set apart now (credited to them, and
        another node's change kept apart from this node's own), not once their change
        and this one are merged in the doc.
        """
        ...

    def room_changed(self, room: Room, actor: str, origin: Origin) -> None:
        """An update from a client, HTTP or the store changed the doc."""
        ...

    def room_awareness(self, room: Room) -> None:
        """The room's awareness (presence) changed."""
        ...

    async def room_unloading(self, room: Room) -> None:
        """The room is about to be stored and dropped: finish what depends on its doc.

        Raising :class:`persistence.store.StoreError` keeps the room loaded.
        """
        ...

    def room_unloaded(self, room: Room) -> None:
        """The room is gone (unloaded or deleted); forget it."""
        ...
