"""Presence for frame clients: who is in a record's room, and viewers Yjs editors can see.

A record's presence is its room's awareness: the states Yjs editors publish
(``{"user": {...}, "cursor": ...}``) plus the states of frame-feed clients that
announced themselves as viewers. A viewer gets an awareness client ID of its own
and a state ``{..., "user": {"name": ...}, "actor": actor, "viewer": true}``, so
y-websocket editors list it like any other peer (:func:`viewer_identity`: what its
own state cannot override). Yjs clients drop remote states not renewed
for 30 s, so viewer states are renewed every :data:`RENEW_SECONDS`; when a viewer
leaves or its connection ends, its removal is broadcast.

Presence is per org (rooms are keyed by ``(org, name)``) and a frame client only
hears of records its grant covers (``FeedSubscriber.covers``); with auth on, a
viewer's ``user.name`` is its actor from the token, whatever its state says.

Changes are pushed to the frame clients watching the record as
``{"type": "presence", "t", "id", "present": [...]}``, at most one per record per
:data:`PUSH_INTERVAL` seconds (cursors move often).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import anyio

from rooms.close_codes import CloseCode
from rooms.codec import AwarenessEntry
from rooms.feed_hub import FeedHub, FeedSubscriber
from rooms.limits import LimitExceeded
from rooms.manager import RoomManager
from rooms.room import Room, RoomState

from .docnames import split_record
from .records.projection import conform

log = logging.getLogger(__name__)

RENEW_SECONDS = 15.0
PUSH_INTERVAL = 0.1
MAX_VIEWER_STATE_BYTES = 4096


@dataclass(slots=True, eq=False)
class _Viewer:
    sub: FeedSubscriber
    room: Room
    client_id: int
    clock: int
    state: str


def viewer_identity(state: dict[str, Any], actor: str, *, authenticated: bool) -> dict[str, Any]:
    """What a viewer's state cannot override: ``actor`` and ``viewer`` always, and the
    user name too when the actor is an identity (with auth off every actor is
    ``anonymous``, and a viewer names itself as any Yjs editor does).

    Args:
        authenticated: Whether ``actor`` comes from a credential (the principal's
            flag: a token whose ``sub`` is ``anonymous`` still names its viewer).
    """
    user = state.get("user")
    user = dict(user) if isinstance(user, dict) else {}
    if authenticated or not isinstance(user.get("name"), str):
        user["name"] = actor
    return {"user": user, "actor": actor, "viewer": True}


def _states(room: Room) -> list[dict[str, Any]]:
    """Awareness states within the value model (any client may send NaN, lone
    surrogates or deep nesting: they must not stop presence for anybody)."""
    present = []
    for entry in room.awareness.current():
        try:
            state = conform(json.loads(entry.state))[0]
        except (ValueError, RecursionError):  # the codec only lets JSON through
            continue
        viewer = isinstance(state, dict) and state.get("viewer") is True
        present.append({"client_id": entry.client_id, "state": state, "viewer": viewer})
    present.sort(key=lambda item: item["client_id"])
    return present


class RecordNotFound(Exception):
    """A ``view`` of a record that does not exist (neither loaded nor stored)."""


class Presence:
    """Presence of records for frame clients (see the module docstring)."""

    def __init__(self, manager: RoomManager, hub: FeedHub) -> None:
        self.manager = manager
        self.hub = hub
        self._viewers: dict[tuple[int, str, str], _Viewer] = {}  # (sub conn id, org, name)
        self._dirty: dict[tuple[str, str], Room] = {}
        self._wake = anyio.Event()

    def list(self, org: str, name: str) -> list[dict[str, Any]]:
        """Who is in the room of doc ``name`` now (empty if it is not loaded)."""
        room = self.manager.rooms.get((org, name))
        if room is None or room.state is not RoomState.LOADED:
            return []
        return _states(room)

    # -- listener side -------------------------------------------------------------

    def changed(self, room: Room) -> None:
        if split_record(room.name) is None:
            return
        self._dirty[(room.org, room.name)] = room
        self._wake.set()

    def room_gone(self, room: Room) -> None:
        for key, viewer in list(self._viewers.items()):
            if viewer.room is room:
                del self._viewers[key]
                viewer.sub.watching.discard(_record(room.name))

    async def run(self) -> None:
        """Push presence changes and renew viewer states until cancelled (both loops
        supervised: restarted after a failure, which is logged and counted)."""
        supervisor = self.manager.supervisor
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.loop, "presence_renew", self._renew_loop)
            tg.start_soon(supervisor.loop, "presence_push", self._push_loop)

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            dirty, self._dirty = self._dirty, {}
            for (org, name), room in dirty.items():
                try:
                    self._push(org, name, room)
                except Exception as exc:  # this record's push alone
                    self.manager.supervisor.note_failure("presence_push", f"record {name!r}", exc)
            await anyio.sleep(PUSH_INTERVAL)

    def _push(self, org: str, name: str, room: Room) -> None:
        if room.state is RoomState.LOADED:
            t, record_id = _record(name)
            event = {"type": "presence", "t": t, "id": record_id}
            event["present"] = _states(room)
            self.hub.publish_event(org, (t, record_id), event)

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(RENEW_SECONDS)
            for viewer in list(self._viewers.values()):
                if viewer.room.state is RoomState.LOADED:
                    viewer.clock += 1
                    viewer.room.set_presence(
                        viewer.sub.conn.id,
                        AwarenessEntry(viewer.client_id, viewer.clock, viewer.state),
                    )

    # -- frame clients -------------------------------------------------------------

    def watch(self, sub: FeedSubscriber, t: str, record_id: str) -> dict[str, Any]:
        """Push presence changes of ``t/id`` to ``sub``; returns the presence now."""
        sub.watching.add((t, record_id))
        name = f"{t}/{record_id}"
        return {"type": "presence", "t": t, "id": record_id, "present": self.list(sub.org, name)}

    async def view(
        self,
        sub: FeedSubscriber,
        t: str,
        record_id: str,
        *,
        actor: str,
        state: dict[str, Any],
        authenticated: bool,
    ) -> None:
        """Show ``sub`` in the record's awareness (loading its room) and watch it.

        Raises:
            ValueError: the state is too large.
            rooms.room.RoomLoadError, rooms.manager.ShuttingDown: the room cannot be used.
            rooms.manager.TooManyRooms: it is not loaded and ``--max-rooms`` are.
            rooms.limits.LimitExceeded: the room has too many awareness clients.
            RecordNotFound: the record is neither loaded nor stored (a view would load,
                and hold, a room for nothing: one client could fill ``--max-rooms``).
        """
        name = f"{t}/{record_id}"
        key = (sub.conn.id, sub.org, name)
        state, reason = conform(state)
        if not isinstance(state, dict):  # only when too large to project
            raise ValueError(f"state larger than {MAX_VIEWER_STATE_BYTES} bytes ({reason})")
        full = {**state, **viewer_identity(state, actor, authenticated=authenticated)}
        text = json.dumps(full, separators=(",", ":"), allow_nan=False)
        if len(text) > MAX_VIEWER_STATE_BYTES:
            raise ValueError(f"state larger than {MAX_VIEWER_STATE_BYTES} bytes")
        viewer = self._viewers.get(key)
        if viewer is None:
            if (sub.org, name) not in self.manager.rooms and not await self.manager.store.has_doc(
                sub.org, name
            ):
                raise RecordNotFound(f"no record {name!r}")
            room = await self.manager.hold(sub.org, name)
            if key in self._viewers:  # the same client asked twice meanwhile
                self.manager.unhold(room)
                viewer = self._viewers[key]
            else:
                taken = {entry.client_id for entry in room.awareness.current()}
                client_id = random.getrandbits(32)
                while client_id in taken:
                    client_id = random.getrandbits(32)
                viewer = _Viewer(sub, room, client_id, 0, text)
                self._viewers[key] = viewer
        viewer.clock += 1
        viewer.state = text
        sub.watching.add((t, record_id))
        shown = viewer.room.set_presence(
            sub.conn.id, AwarenessEntry(viewer.client_id, viewer.clock, viewer.state)
        )
        if not shown:  # the room is at --max-awareness-ids-per-room
            self.leave(sub, t, record_id)
            raise LimitExceeded(
                CloseCode.AWARENESS_LIMIT,
                "too_many_awareness_clients",
                f"record {name!r} has too many awareness clients to add a viewer",
            )
        log.info("conn=%s record=%r actor=%s viewing", sub.conn.id, name, actor)

    def leave(self, sub: FeedSubscriber, t: str, record_id: str) -> None:
        """Stop viewing and watching ``t/id``."""
        sub.watching.discard((t, record_id))
        viewer = self._viewers.pop((sub.conn.id, sub.org, f"{t}/{record_id}"), None)
        if viewer is not None:
            viewer.room.drop_presence(sub.conn.id)
            self.manager.unhold(viewer.room)

    def leave_uncovered(self, sub: FeedSubscriber) -> list[tuple[str, str]]:
        """Stop viewing and watching the records ``sub``'s grant no longer covers (its
        token was renewed with other docs); returns them."""
        gone = [record for record in sub.watching if not sub.covers(record)]
        for t, record_id in gone:
            self.leave(sub, t, record_id)
        return gone

    def leave_all(self, sub: FeedSubscriber) -> None:
        """``sub`` is gone: remove it from every record it viewed."""
        for key, viewer in list(self._viewers.items()):
            if viewer.sub is sub:
                del self._viewers[key]
                viewer.room.drop_presence(sub.conn.id)
                self.manager.unhold(viewer.room)
        sub.watching.clear()


def _record(name: str) -> tuple[str, str]:
    split = split_record(name)
    assert split is not None
    return split
