"""Several :class:`~rooms.listener.RoomListener` as one: the manager takes one listener.

Each hook is handed to every listener in order. The synchronous hooks must stay cheap
in each (see :mod:`rooms.listener`); ``room_unloading`` awaits each in turn, and a
:class:`persistence.store.StoreError` from one (keep the room loaded) stops the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .listener import RoomListener

if TYPE_CHECKING:
    from .room import Origin, Room


class Listeners:
    """A :class:`~rooms.listener.RoomListener` that tells each of ``listeners``."""

    def __init__(self, *listeners: RoomListener) -> None:
        self.listeners = listeners

    async def room_loaded(self, room: Room) -> None:
        for listener in self.listeners:
            await listener.room_loaded(room)

    def room_changing(self, room: Room, actor: str | None, origin: Origin) -> None:
        for listener in self.listeners:
            listener.room_changing(room, actor, origin)

    def room_changed(self, room: Room, actor: str, origin: Origin) -> None:
        for listener in self.listeners:
            listener.room_changed(room, actor, origin)

    def room_awareness(self, room: Room) -> None:
        for listener in self.listeners:
            listener.room_awareness(room)

    async def room_unloading(self, room: Room) -> None:
        for listener in self.listeners:
            await listener.room_unloading(room)

    def room_unloaded(self, room: Room) -> None:
        for listener in self.listeners:
            listener.room_unloaded(room)
