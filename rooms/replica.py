"""Keeps a loaded room in step with the other nodes that hold the same doc.

A :class:`Replica` is the room's :class:`~rooms.broadcaster.RoomSink`. Outbound, it
publishes every update the room committed (with the store's ids) and every awareness
message the room relays. Inbound, it applies the other nodes' updates to the doc and
hands them to the room's own connections, and records their awareness.

Gap repair, not hope: the store numbers each doc's updates and every commit names the
doc's previous update (:class:`~persistence.store.Committed`). The replica keeps
:attr:`Replica.last`, the newest update id such that it holds every update of the doc
up to it. An update (remote or its own commit) whose ``prev_update_id`` is not
``last`` reveals a gap: after a short wait for messages still on their way, the
missing range is read from the shared store (:meth:`~persistence.store.Store.updates_since`)
and applied. Applying an update twice is harmless (Yjs integrates each struct once),
so updates are applied as they arrive and only the bookkeeping waits.

The same read runs right after the room joins the bus (what was committed between
loading the doc and subscribing) and after a bus outage (:meth:`bus_resumed`). After an
outage the replica also announces its head (an empty update naming itself as its own
predecessor): what this node committed while its link was down was never published, and
the nodes that missed it see the gap and read the store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from persistence.store import Committed, Store, StoreError

from .broadcaster import Broadcaster, RemoteAwareness, RemoteUpdate
from .codec import (
    AwarenessUpdate,
    QueryAwareness,
    decode_message,
    encode_awareness_update,
    encode_query_awareness,
)
from .strict_json import InputError

if TYPE_CHECKING:
    from .room import Room

log = logging.getLogger(__name__)

#: An update that changes nothing: the body of a head announcement.
EMPTY_UPDATE = b"\x00\x00"

#: How long a gap may stay open before the store is read (messages from several
#: publishers may arrive slightly out of commit order).
GAP_WAIT_SECONDS = 0.05


class Replica:
    """The cross-node side of one room.

    Args:
        room: The loaded room.
        broadcaster: The bus to the other nodes.
        store: The store all nodes share (read for gap repair).
    """

    def __init__(self, room: Room, broadcaster: Broadcaster, store: Store) -> None:
        self.room = room
        self.broadcaster = broadcaster
        self.store = store
        #: The newest update id up to which this node holds every update of the doc.
        self.last = room.last_update_id
        #: Update ids above ``last`` already held (arrived out of order).
        self._ahead: dict[int, int] = {}  # prev_update_id -> update_id
        self._repair_due = False
        self._announce_due = False
        self._wake = anyio.Event()
        self._owners: dict[str, int] = {}
        self.repairs = 0
        self.repaired_updates = 0

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED):
        """Join the doc's channel, catch up once, then repair gaps as they show up."""
        await self.broadcaster.join(self.room.org, self.room.name, self)
        try:
            # Nodes that held the doc before us know awareness states that they will
            # not renew for up to 15 s: ask them (y-protocols' query-awareness).
            self.awareness(encode_query_awareness())
            self._repair_due = True
            task_status.started()
            while True:
                if not self._repair_due:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    await anyio.sleep(GAP_WAIT_SECONDS)
                if self._repair_due or self._ahead:
                    self._repair_due = False
                    await self._repair()
                if self._announce_due:
                    self._announce_due = False
                    self._announce()
        finally:
            with anyio.CancelScope(shield=True):
                await self.broadcaster.leave(self.room.org, self.room.name)

    # -- outbound --------------------------------------------------------------------

    def committed(self, committed: Committed, update: bytes, actor: str) -> None:
        """The room's own update is committed: tell the others, advance the chain."""
        self.broadcaster.publish_update(
            RemoteUpdate(
                origin=self.broadcaster.node_id,
                org=self.room.org,
                name=self.room.name,
                update_id=committed.update_id,
                prev_update_id=committed.prev_update_id,
                update=update,
                actor=actor,
            )
        )
        self._advance(committed.prev_update_id, committed.update_id)

    def awareness(self, message: bytes) -> None:
        """The room relayed an awareness message to its connections: tell the others."""
        self.broadcaster.publish_awareness(
            RemoteAwareness(
                origin=self.broadcaster.node_id,
                org=self.room.org,
                name=self.room.name,
                message=message,
            )
        )

    # -- inbound (RoomSink) ----------------------------------------------------------

    def remote_update(self, update: RemoteUpdate) -> None:
        if update.update_id <= self.last:
            return  # held already (repaired before it arrived)
        try:
            self.room.apply_remote(update.update, actor=update.actor)
        except Exception as exc:  # a corrupt message must not stop the reader
            log.warning(
                "room=%r update %d from node %s not applied: %s",
                self.room.name,
                update.update_id,
                update.origin,
                exc,
            )
            self._repair_soon()
            return
        self._advance(update.prev_update_id, update.update_id)

    def remote_awareness(self, awareness: RemoteAwareness) -> None:
        try:
            message = decode_message(awareness.message)
            if isinstance(message, QueryAwareness):
                self._answer_query()
                return
            if not isinstance(message, AwarenessUpdate):
                raise ValueError(f"not an awareness message: {type(message).__name__}")
            entries = message.entries
        except (ValueError, InputError) as exc:
            log.warning(
                "room=%r bad awareness from node %s: %s", self.room.name, awareness.origin, exc
            )
            return
        self.room.remote_awareness(self.owner_of(awareness.origin), entries, awareness.message)

    def node_gone(self, node: str) -> None:
        owner = self._owners.pop(node, None)
        if owner is not None:
            self.room.drop_presence(owner, share=False)

    def bus_resumed(self) -> None:
        """Back on the bus after an outage: read what others committed meanwhile, then
        announce how far this node is, so that nodes which missed what it committed
        while its link was down (its publishes were dropped) repair too."""
        self._announce_due = True
        self._repair_soon()

    # -- internals -------------------------------------------------------------------

    def _answer_query(self) -> None:
        """Another node loaded the doc: tell it the states of this node's clients."""
        states = self.room.awareness.current(local_only=True)
        if states:
            self.awareness(encode_awareness_update(states))

    def owner_of(self, node: str) -> int:
        """The awareness owner id standing for ``node`` (negative: never a connection)."""
        owner = self._owners.get(node)
        if owner is None:
            owner = self._owners[node] = -(len(self._owners) + 1)
        return owner

    def _announce(self) -> None:
        """Publish this node's head of the doc as an empty update whose previous id is
        itself: a node behind it sees a gap and reads the store."""
        if self.last == 0:
            return
        self.broadcaster.publish_update(
            RemoteUpdate(
                origin=self.broadcaster.node_id,
                org=self.room.org,
                name=self.room.name,
                update_id=self.last,
                prev_update_id=self.last,
                update=EMPTY_UPDATE,
                actor="",
            )
        )

    def _advance(self, prev: int, update_id: int) -> None:
        if update_id <= self.last:
            return
        if prev == self.last:
            self.last = update_id
            while self.last in self._ahead:  # what arrived early now follows on
                self.last = self._ahead.pop(self.last)
            return
        self._ahead[prev] = update_id
        self._wake.set()

    def _repair_soon(self) -> None:
        self._repair_due = True
        self._wake.set()

    async def _repair(self) -> None:
        """Read what the doc's log holds after :attr:`last` and apply it."""
        since = self.last
        try:
            tail = await self.store.updates_since(self.room.org, self.room.name, since)
        except StoreError as exc:
            log.warning(
                "room=%r gap after update %d not repaired yet: %s", self.room.name, since, exc
            )
            await anyio.sleep(1.0)
            self._repair_due = True
            return
        applied = 0
        try:
            if tail.snapshot is not None:
                self.room.apply_remote(tail.snapshot, actor=None)
                applied += 1
            for _update_id, data in tail.updates:
                self.room.apply_remote(data, actor=None)
                applied += 1
        except Exception as exc:
            log.error("room=%r stored updates after %d not applied: %s", self.room.name, since, exc)
            return
        if tail.last_update_id > self.last:
            self.last = tail.last_update_id
        # Early arrivals the read covered are done with; later ones still chain on.
        self._ahead = {p: u for p, u in self._ahead.items() if u > self.last and p >= self.last}
        if applied:
            self.repairs += 1
            self.repaired_updates += applied
            log.info(
                "room=%r repaired %d updates after update %d (now at %d)",
                self.room.name,
                applied,
                since,
                self.last,
            )
