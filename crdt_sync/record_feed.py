"""The record feed of one node, wired: who frames, who mutates, who publishes, who trims.

Data flows one way, each part owning one ordering rule:

- :class:`~crdt_sync.records.coalescer.Coalescer`: edits -> frame drafts queued in the
  store (*when a record is framed*);
- :class:`~crdt_sync.mutations.MutationEngine`: HTTP mutations and deletes -> doc
  changes, framed by the coalescer (*mutations of one record apply in order and answer
  once*);
- :class:`~crdt_sync.records.publisher.FramePublisher`: each commit's frames -> the
  node's :class:`~rooms.frame_bus.FrameBus` (*in queue order, once*), from which the
  frame stream (:mod:`crdt_sync.sync_stream`) feeds subscribers (*what a subscriber has
  seen*);
- :class:`~crdt_sync.records.retention.FrameRetention`: the frame log's trim.

:class:`RecordFeed` holds them and is the rooms' one
:class:`~rooms.listener.RoomListener`: record changes go to the coalescer, awareness
to :attr:`RecordFeed.presence` (set once the room manager exists). It does nothing
else itself.
"""

from __future__ import annotations

from typing import Any

import anyio

from persistence.store import Store
from rooms.frame_bus import FrameBus
from rooms.manager import RoomManager
from rooms.room import Origin, Room

from .mutations import MutationEngine
from .records.coalescer import Coalescer
from .records.publisher import FramePublisher
from .records.retention import FrameRetention


class RecordFeed:
    """Frames for every change of a record; mutations; deletes. See the module docstring.

    Args:
        store: Where frames and projections are logged.
        bus: Where the frames this node commits are published (the node's
            :class:`~rooms.feed_hub.FeedHub` subscribes to it).
        coalesce_ms: The coalescing window of Yjs updates.
        retention: Frames kept per tenant.
    """

    def __init__(
        self, store: Store, bus: FrameBus, *, coalesce_ms: float = 200, retention: int = 1_000_000
    ) -> None:
        self.retention = FrameRetention(store, retention)
        self.publisher = FramePublisher(bus, self.retention.count)
        self.coalescer = Coalescer(store, self.publisher, coalesce_ms=coalesce_ms)
        self.mutations = MutationEngine(store, self.coalescer)
        self.presence: Any = None  # crdt_sync.presence.Presence, told of awareness changes

    async def run(self, manager: RoomManager, task_status: Any = anyio.TASK_STATUS_IGNORED):
        """The coalescer's loops (flush, reconcile) and the trim loop, until cancelled,
        each under the manager's supervisor."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.coalescer.run, manager)
            tg.start_soon(manager.supervisor.loop, "frame_trim", self.retention.run)
            task_status.started()

    # -- RoomListener --------------------------------------------------------------

    async def room_loaded(self, room: Room) -> None:
        await self.coalescer.room_loaded(room)

    def room_changing(self, room: Room, actor: str | None, origin: Origin) -> None:
        self.coalescer.room_changing(room, actor, origin)

    def room_changed(self, room: Room, actor: str, origin: Origin) -> None:
        self.coalescer.room_changed(room, actor, origin)

    def room_awareness(self, room: Room) -> None:
        if self.presence is not None:
            self.presence.changed(room)

    async def room_unloading(self, room: Room) -> None:
        await self.coalescer.room_unloading(room)

    def room_unloaded(self, room: Room) -> None:
        self.coalescer.room_unloaded(room)
        if self.presence is not None:
            self.presence.room_gone(room)
