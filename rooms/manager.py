"""All rooms of a node: create on first connection, load once, unload when idle.

The manager owns a task group for everything that outlives one connection:
loading, compaction, idle unloading and the liveness sweep. A failure in one of
those tasks is logged with its room and never cancels the others (pycrdt-websocket
runs rooms in one task group, so one failing room could take the server down).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from persistence.store import Store, StoreError

from .broadcaster import Broadcaster
from .close_codes import CloseCode
from .codec import encode_sync_step1
from .connection import Connection
from .listener import RoomListener
from .memory import Reclaimer, release_freed_memory
from .replica import Replica
from .room import Room, RoomError, RoomLoadError, RoomState
from .supervisor import Supervisor

log = logging.getLogger(__name__)

#: Seconds without an unload before freed memory is handed back (unloads come in waves).
TRIM_DELAY = 2.0

#: Seconds before a failed replica (the room's link to the other nodes) starts again.
REPLICA_RESTART_DELAY = 1.0
#: First and longest pause before a room whose write failed is compacted (again).
REPAIR_PAUSE = 0.5
REPAIR_MAX_PAUSE = 10.0


@dataclass(frozen=True, slots=True)
class RoomSettings:
    idle_seconds: float = 30.0
    compact_updates: int = 500
    ping_interval: float = 10.0
    ping_timeout: float = 30.0
    awareness_timeout: float = 30.0
    max_awareness_per_connection: int = 64
    max_awareness_per_room: int = 10_000
    max_awareness_state_bytes: int = 64 * 1024
    max_pending_bytes: int = 1024 * 1024
    max_rooms: int = 10_000
    max_doc_bytes: int = 0  # 0: no limit


class ShuttingDown(Exception):
    """The manager is closing: no new connection may join."""


class TooManyRooms(RoomError):
    """``--max-rooms`` rooms are loaded and none of them is idle (WebSocket: close 1013;
    HTTP: 503)."""


class RoomManager:
    """Rooms keyed by ``(org, name)``.

    Use as an async context manager; leaving it persists and unloads every room.
    """

    def __init__(
        self,
        store: Store,
        settings: RoomSettings | None = None,
        listener: RoomListener | None = None,
        supervisor: Supervisor | None = None,
        broadcaster: Broadcaster | None = None,
    ) -> None:
        self.supervisor = supervisor or Supervisor()
        #: The bus to the other nodes (``None``: one node): each loaded room gets a
        #: :class:`~rooms.replica.Replica` on it.
        self.broadcaster = broadcaster
        self.store = store
        self.settings = settings or RoomSettings()
        self.listener = listener
        self.rooms: dict[tuple[str, str], Room] = {}
        self._tg: TaskGroup | None = None
        self._unload_timers: dict[tuple[str, str], anyio.CancelScope] = {}
        #: Docs being deleted: no room of them loads until the deletion is committed.
        self._deleting: dict[tuple[str, str], anyio.Event] = {}
        self.store_failures = 0
        self._repairing: set[Room] = set()  # rooms waiting to be stored whole again
        self._repair_wanted = anyio.Event()
        self.closing = False
        self._trim_scheduled = False
        self._trim_due = 0.0
        self.reclaimer = Reclaimer()

    async def __aenter__(self) -> RoomManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self.supervisor.loop, "liveness", self._sweep_liveness)
        self._tg.start_soon(self.supervisor.loop, "repair", self._repair_rooms)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        try:
            await self.unload_all()
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None

    @property
    def connection_count(self) -> int:
        return sum(len(room.connections) for room in self.rooms.values())

    def spawn(self, name: str, func: Callable[[], Awaitable[None]], *, kind: str = "") -> None:
        """Run ``func`` in the background under the supervisor: its failure is logged
        with ``name`` (the room) and counted under ``kind`` (default: the first word of
        ``name``, e.g. ``compact``), never propagated to other rooms."""
        assert self._tg is not None, "RoomManager not started"
        kind = kind or name.split(" ", 1)[0]
        self._tg.start_soon(self.supervisor.task, kind, name, func, name=name)

    # -- rooms -------------------------------------------------------------------

    async def get_room(self, org: str, name: str) -> Room:
        """The loaded room for ``(org, name)``, loading it (once) if needed.

        Raises:
            RoomLoadError: the stored state could not be loaded.
            ShuttingDown: the room is not loaded and the manager is closing.
            TooManyRooms: it is not loaded, ``max_rooms`` are, and none is idle.
        """
        key = (org, name)
        while True:
            deleting = self._deleting.get(key)
            if deleting is not None:
                # A load now could read the doc before its deletion commits (a second
                # room of the doc, its deleted state served again): wait for it.
                await deleting.wait()
                continue
            room = self.rooms.get(key)
            if room is None:
                if self.closing:  # no new room once unload_all has begun
                    raise ShuttingDown("server shutting down")
                if len(self.rooms) >= self.settings.max_rooms:
                    await self._make_room_for(key)
                    continue  # it may have been loaded meanwhile
                room = Room(
                    org,
                    name,
                    self.store,
                    compact_updates=self.settings.compact_updates,
                    awareness_timeout=self.settings.awareness_timeout,
                    max_awareness_per_connection=self.settings.max_awareness_per_connection,
                    max_awareness_per_room=self.settings.max_awareness_per_room,
                    max_awareness_state_bytes=self.settings.max_awareness_state_bytes,
                    max_pending_bytes=self.settings.max_pending_bytes,
                    max_doc_bytes=self.settings.max_doc_bytes,
                    on_store_failure=self._store_failed,
                    listener=self.listener,
                )
                self.rooms[key] = room
                try:
                    await room.load()
                finally:
                    if room.state is not RoomState.LOADED and self.rooms.get(key) is room:
                        # Do not cache a failure: the next connection tries again.
                        del self.rooms[key]
                        room.mark_closed()
                # After the check above: while the listener awaits, the room may
                # legitimately begin to unload (shutdown), which is not a failed load.
                if room.state is RoomState.LOADED and self.broadcaster is not None:
                    self._replicate(room)
                if room.state is RoomState.LOADED and self.listener is not None:
                    try:
                        await self.listener.room_loaded(room)
                    except Exception:
                        log.exception("room=%r listener failed after load", name)
            elif room.state in (RoomState.NEW, RoomState.LOADING):
                await room.loaded.wait()
            elif room.state is RoomState.CLOSING:
                await room.unload_settled.wait()
                continue
            if room.state is RoomState.LOADED:
                self._cancel_unload(key)
                return room
            if room.load_error is not None:
                raise RoomLoadError(str(room.load_error)) from room.load_error
            # CLOSED while we waited: look again.

    def _replicate(self, room: Room) -> None:
        """Keep ``room`` in step with the other nodes until it is closed. Its replica is
        set before any connection joins, so every local commit is published; updates
        committed elsewhere before it subscribed are read from the store by it."""
        assert self.broadcaster is not None
        replica = room.replica = Replica(room, self.broadcaster, self.store)

        async def run() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(replica.run)
                    await room.closed.wait()
                    tg.cancel_scope.cancel()
            except Exception:
                # A room that no longer hears the other nodes would drift apart from
                # them: the replica starts again in a second (it first reads what the
                # store holds after its doc's head, so nothing missed meanwhile stays
                # missing); the supervisor logs and counts the failure.
                self.spawn(f"replica restart {room.name!r}", restart, kind="replica")
                raise

        async def restart() -> None:
            await anyio.sleep(REPLICA_RESTART_DELAY)
            if room.state is RoomState.LOADED and room.replica is replica:
                self._replicate(room)

        self.spawn(f"replica {room.name!r}", run)

    async def _make_room_for(self, key: tuple[str, str]) -> None:
        """Unload idle rooms (nobody connected or holding them, waiting for their idle
        unload), oldest activity first, until one more room fits.

        Raises:
            TooManyRooms: none is idle.
        """
        while len(self.rooms) >= self.settings.max_rooms and key not in self.rooms:
            idle = [
                room
                for room in self.rooms.values()
                if room.state is RoomState.LOADED
                and not room.connections
                and not room.holds
                and (room.org, room.name) not in self._deleting  # the delete drops it
            ]
            if not idle:
                log.warning(
                    "room=%r refused: %d rooms loaded (--max-rooms), none idle",
                    key[1],
                    len(self.rooms),
                )
                raise TooManyRooms(
                    f"{len(self.rooms)} rooms are loaded (--max-rooms) and none is idle"
                )
            oldest = min(idle, key=lambda room: room.last_activity)
            self._cancel_unload((oldest.org, oldest.name))
            if await self.unload(oldest):
                continue
            idle_still = not oldest.connections and not oldest.holds
            if oldest.state is RoomState.LOADED and idle_still:
                # Its state could not be stored: it stays (its unload is rescheduled).
                raise TooManyRooms(
                    f"{len(self.rooms)} rooms are loaded (--max-rooms); an idle one "
                    "cannot be unloaded: the store fails"
                )

    async def join(self, org: str, name: str, conn: Connection) -> Room:
        """Load the room if needed and add ``conn`` to it.

        Raises:
            RoomLoadError: the stored state could not be loaded.
            ShuttingDown: the server began shutting down while the room loaded.
        """
        if self.closing:
            raise ShuttingDown("server shutting down")
        room = await self.get_room(org, name)
        if self.closing:
            self.release(room)
            raise ShuttingDown("server shutting down")
        room.join(conn)
        return room

    def leave(self, room: Room, conn: Connection) -> None:
        room.leave(conn)
        self.release(room)

    def release(self, room: Room) -> None:
        """Someone (a connection, an HTTP request) is done with ``room``: unload it later
        if nobody else uses it."""
        if not room.connections and not room.holds and room.state is RoomState.LOADED:
            self._schedule_unload(room)

    async def hold(self, org: str, name: str) -> Room:
        """Load the room and keep it loaded until :meth:`unhold` (a frame-feed viewer).

        Raises:
            RoomLoadError: the stored state could not be loaded.
            ShuttingDown: the server is shutting down.
        """
        if self.closing:
            raise ShuttingDown("server shutting down")
        room = await self.get_room(org, name)
        room.holds += 1
        return room

    def unhold(self, room: Room) -> None:
        room.holds = max(0, room.holds - 1)
        self.release(room)

    def after_update(self, room: Room) -> None:
        """Called after a logged update: compact in the background when due."""
        if room.wants_compaction:

            async def compact_while_due() -> None:
                # Updates keep arriving while a compaction commits: if another one is
                # due when it ends, run it now rather than wait for the next update.
                while room.wants_compaction and room.state is RoomState.LOADED:
                    await room.compact()

            self.spawn(f"compact {room.name!r}", compact_while_due)

    def _store_failed(self, room: Room, exc: BaseException) -> None:
        """A commit holding updates of ``room`` failed: its clients must not believe
        their edits are stored. Called once per failed update; logged once per room."""
        self.store_failures += 1
        self._repair_later(room)
        open_conns = [c for c in room.connections.values() if not c.closing]
        if not open_conns:
            return
        log.error(
            "room=%r store write failed, closing %d clients with 4503: %s",
            room.name,
            len(open_conns),
            exc,
        )
        room.close_all(CloseCode.STORE_UNAVAILABLE, "updates cannot be stored")

    def _repair_later(self, room: Room) -> None:
        """Have :meth:`_repair_rooms` store the whole state of ``room`` (called from a
        commit's callback, so it only marks the room)."""
        self._repairing.add(room)
        self._repair_wanted.set()

    async def _repair_rooms(self) -> None:
        """Store whole again every room whose write failed, once the store takes writes.

        Such a room's log lacks the updates whose commit failed, while its doc holds
        them: updates logged after them depend on them, and loading the doc from the
        store would leave those out too (acknowledged, yet not seen). A compaction
        writes the whole state and closes the gap. Tried with a growing pause while
        the store fails (an unload compacts the room as well).
        """
        pause = REPAIR_PAUSE
        while True:
            await self._repair_wanted.wait()
            await anyio.sleep(pause)
            failed = False
            for room in list(self._repairing):
                if not room.store_failed or room.state is not RoomState.LOADED:
                    self._repairing.discard(room)
                    continue
                try:
                    await room.compact()
                except StoreError as exc:
                    log.debug("room=%r repair compaction failed: %s", room.name, exc)
                    failed = True
                    break  # the store still fails: the others wait for the next round
                self._repairing.discard(room)
                log.info("room=%r stored whole again after a failed write", room.name)
            pause = min(pause * 2, REPAIR_MAX_PAUSE) if failed else REPAIR_PAUSE
            if not self._repairing:
                self._repair_wanted = anyio.Event()

    # -- unloading ---------------------------------------------------------------

    def _schedule_unload(self, room: Room) -> None:
        key = (room.org, room.name)
        self._cancel_unload(key)
        scope = anyio.CancelScope()
        self._unload_timers[key] = scope

        async def unload_later() -> None:
            with scope:
                await anyio.sleep(self.settings.idle_seconds)
                if self._unload_timers.get(key) is scope:
                    del self._unload_timers[key]
                    await self.unload(room)

        self.spawn(f"unload {room.name!r}", unload_later)

    def _cancel_unload(self, key: tuple[str, str]) -> None:
        scope = self._unload_timers.pop(key, None)
        if scope is not None:
            scope.cancel()

    async def unload(self, room: Room) -> bool:
        """Persist and drop ``room`` if nobody is connected; ``False`` if kept.

        Returns only once everything the room logged is committed: the snapshot it
        writes is queued behind every earlier append, and waits for a compaction
        already running (see :meth:`Room.persist_all`).
        """
        if room.connections or room.holds or room.state is not RoomState.LOADED:
            return False
        if (room.org, room.name) in self._deleting:
            return False  # the delete drops it; storing it now would bring it back
        room.begin_unload()
        try:
            with anyio.CancelScope(shield=True):
                if self.listener is not None:
                    try:
                        await self.listener.room_unloading(room)
                    except StoreError:
                        raise
                    except Exception as exc:  # its frames are lost, never the doc
                        self.supervisor.note_failure(
                            "unload", f"room={room.name!r} unload listener", exc
                        )
                await room.persist_all()
        except Exception as exc:
            # Keep it, and settle it (LOADED again): its state is the only copy of what
            # failed to commit, and every joiner waits for the unload to settle.
            if isinstance(exc, StoreError):
                log.error("room=%r not unloaded, its state is not stored: %s", room.name, exc)
            else:
                self.supervisor.note_failure("unload", f"room={room.name!r} unload", exc)
            room.cancel_unload()
            self._schedule_unload(room)
            return False
        key = (room.org, room.name)
        if self.rooms.get(key) is room:
            del self.rooms[key]
        room.finish_unload()
        if self.listener is not None:
            self.listener.room_unloaded(room)
        log.debug("room=%r unloaded", room.name)
        self._schedule_trim()
        return True

    def _schedule_trim(self) -> None:
        """Once the current wave of unloads is over, collect what the unloaded rooms
        and their connections left in reference cycles, and hand freed memory back to
        the OS (see :mod:`rooms.memory`)."""
        if self.closing:
            return
        # The wave is over once no room has unloaded for TRIM_DELAY.
        self._trim_due = anyio.current_time() + TRIM_DELAY
        if self._trim_scheduled:
            return
        self._trim_scheduled = True

        async def trim_later() -> None:
            try:
                due = 0.0
                while due < self._trim_due:  # pushed back by each unload meanwhile
                    due = self._trim_due
                    await anyio.sleep_until(due)
                await anyio.sleep(self.reclaimer.wait_seconds())
                self.reclaimer.collect()
                released = await anyio.to_thread.run_sync(release_freed_memory)
                log.debug("freed memory of unloaded rooms returned to the OS: %s", released)
            finally:
                self._trim_scheduled = False

        self.spawn("release freed memory", trim_later)

    async def unload_all(self) -> None:
        """Close every connection with 1001, persist and drop every room (shutdown)."""
        self.closing = True
        for room in list(self.rooms.values()):
            if room.state in (RoomState.NEW, RoomState.LOADING):
                await room.loaded.wait()  # joiners see ``closing`` and leave
        for room in list(self.rooms.values()):
            room.close_all(CloseCode.GOING_AWAY, "server shutting down")
        for key in list(self._unload_timers):
            self._cancel_unload(key)
        for room in list(self.rooms.values()):
            room.connections.clear()
            room.holds = 0
            if room.state is RoomState.LOADED:
                await self.unload(room)

    @asynccontextmanager
    async def deleting(self, org: str, name: str) -> AsyncIterator[Room | None]:
        """Exclusive access to doc ``(org, name)`` while it is deleted.

        Waits until no load or unload of the doc is under way, and keeps every new
        load of it waiting until the block exits: the caller deletes the doc in the
        store inside the block and awaits the commit, so that no room can be loaded
        from the state being deleted (or handed to clients after its deletion).
        Deletes of one doc run one after the other.

        Yields:
            The doc's loaded room, or ``None``; drop it with :meth:`delete_room`.
        """
        key = (org, name)
        while (other := self._deleting.get(key)) is not None:
            await other.wait()
        gate = self._deleting[key] = anyio.Event()
        try:
            self._cancel_unload(key)
            while True:
                room = self.rooms.get(key)
                if room is None or room.state in (RoomState.LOADED, RoomState.FAILED):
                    break
                if room.state in (RoomState.NEW, RoomState.LOADING):
                    await room.loaded.wait()
                else:  # CLOSING: an unload is storing it; it may also be kept
                    await room.unload_settled.wait()
            yield room
        finally:
            del self._deleting[key]
            gate.set()
            room = self.rooms.get(key)
            if room is not None:
                self.release(room)  # not deleted after all: unload it when idle

    def delete_room(self, org: str, name: str) -> bool:
        """Close the connections of a deleted doc and drop its room without storing it.

        Only inside :meth:`deleting`. Returns whether the room held a doc.
        """
        key = (org, name)
        if key not in self._deleting:
            raise RuntimeError(f"expected DELETING, got no deletion of {name!r} under way")
        self._cancel_unload(key)
        room = self.rooms.pop(key, None)
        if room is None:
            return False
        room.close_all(CloseCode.NOT_FOUND, "document deleted")
        room.connections.clear()
        if room.state in (RoomState.LOADED, RoomState.FAILED):
            room.begin_unload()
            room.finish_unload()
        if self.listener is not None:
            self.listener.room_unloaded(room)
        return not room.is_empty

    async def delete(self, org: str, name: str) -> bool:
        """Delete a doc that is not a record: close its clients, drop its room, delete
        it in the store (awaited). Returns whether it existed.

        Raises:
            StoreError: the deletion could not be committed.
        """
        async with self.deleting(org, name):
            was_loaded = self.delete_room(org, name)
            existed = await self.store.delete(org, name)
        return existed or was_loaded

    # -- liveness ----------------------------------------------------------------

    async def _sweep_liveness(self) -> None:
        """Probe silent connections and close dead ones.

        ASGI servers do not pass WebSocket pongs to the app, so liveness is judged
        by what the app does see: any message. A connection silent for
        ``ping_interval`` (plus up to half of it, per connection, so that clients that
        went silent together are not all probed at once) is sent sync step1, which every
        Yjs client must answer with step2; one silent for ``ping_timeout`` is closed
        with 4408.
        """
        interval = self.settings.ping_interval
        timeout = self.settings.ping_timeout
        spread = min(interval / 2, max(0.0, timeout - interval) / 2)
        while True:
            await anyio.sleep(min(interval, timeout) / 8)
            now = time.monotonic()
            for room in list(self.rooms.values()):
                if room.state is not RoomState.LOADED:
                    continue
                try:
                    self._probe_room(room, now, interval, timeout, spread)
                except Exception as exc:  # one room's failure must not stop the sweep
                    self.supervisor.note_failure("liveness", f"room={room.name!r}", exc)

    def _probe_room(
        self, room: Room, now: float, interval: float, timeout: float, spread: float
    ) -> None:
        """Close ``room``'s connections silent for ``timeout``; probe those silent for
        ``interval`` (plus their share of ``spread``)."""
        probe: bytes | None = None
        for conn in list(room.connections.values()):
            silent = now - conn.last_received
            if silent >= timeout:
                log.info(
                    "conn=%s room=%r actor=%s silent for %.0f s, closing",
                    conn.id,
                    room.name,
                    conn.actor,
                    silent,
                )
                conn.close(CloseCode.TIMEOUT, f"nothing received for {timeout:g} s")
            elif silent >= interval + spread * conn.probe_jitter and not conn.probed:
                if probe is None:
                    probe = encode_sync_step1(room.doc.get_state())
                conn.probed = True
                conn.enqueue(probe)
