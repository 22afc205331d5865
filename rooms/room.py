"""One room: a pycrdt ``Doc``, its awareness, and the connections editing it.

Life of a room (a wrong transition raises ``RuntimeError("expected X, got Y")``)::

    NEW --load()--> LOADING --> LOADED --begin_unload()--> CLOSING --> CLOSED
                           \\--> FAILED (stored state unreadable; never serves)

A room serves nobody until its stored state is loaded, so a client never sees an
empty doc for a stored one. Every update that changes the doc is appended to the
store (group-committed) before the next message of the same connection is read,
relayed as the very bytes that arrived, and counted towards compaction.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from pycrdt import Doc, merge_updates

from persistence.store import Appended, Committed, FrameBatch, Store, StoreError

from .awareness import RoomAwareness
from .close_codes import CloseCode
from .codec import (
    AwarenessEntry,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_step2,
    encode_sync_update,
)
from .connection import Connection
from .limits import LimitExceeded
from .listener import RoomListener
from .pending import missing_part
from .stats import TRAFFIC
from .stepping import finish, step

if TYPE_CHECKING:
    from .replica import Replica

log = logging.getLogger(__name__)

#: Most updates a room keeps waiting for missing dependencies: yrs re-examines every
#: pending update on each apply, so their number (not only their bytes) costs CPU.
MAX_PENDING_UPDATES = 256

#: The pending-update owner of what other nodes sent (never a connection id).
REMOTE_OWNER = -1

#: An update that changes nothing (no structs, empty delete set).
EMPTY_UPDATE = b"\x00\x00"


class RoomState(enum.Enum):
    NEW = "NEW"
    LOADING = "LOADING"
    LOADED = "LOADED"
    FAILED = "FAILED"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


class RoomError(Exception):
    """Base class of room errors."""


class RoomLoadError(RoomError):
    """The stored document could not be read or applied."""


class InvalidUpdate(RoomError):
    """pycrdt rejected an update."""


class Origin(enum.Enum):
    """Where an applied update came from; decides echoes and persistence."""

    CLIENT = "client"
    HTTP = "http"
    STORE = "store"
    MUTATION = "mutation"  # a SyncFrame mutation: framed by the feed itself
    REMOTE = "remote"  # committed by another node, arrived over the bus: not logged again


def now_ms() -> int:
    return int(time.time() * 1000)


class Room:
    """A document being edited.

    Args:
        org: Tenant of the document.
        name: Document name as clients send it.
        store: Where updates are logged and snapshots kept.
        compact_updates: Fold the log into a snapshot after this many updates.
        on_store_failure: Called (once per failure) when a write could not be made durable.
        listener: Told about changes and awareness (the SyncFrame feed).
    """

    def __init__(
        self,
        org: str,
        name: str,
        store: Store,
        *,
        compact_updates: int = 500,
        awareness_timeout: float = 30.0,
        max_awareness_per_connection: int = 64,
        max_awareness_per_room: int = 10_000,
        max_awareness_state_bytes: int = 64 * 1024,
        max_pending_bytes: int = 1024 * 1024,
        max_doc_bytes: int = 0,
        on_store_failure: Callable[[Room, BaseException], None] | None = None,
        listener: RoomListener | None = None,
    ) -> None:
        self.org = org
        self.name = name
        self.store = store
        self.doc = Doc()
        self.awareness = RoomAwareness(
            awareness_timeout,
            max_per_owner=max_awareness_per_connection,
            max_per_room=max_awareness_per_room,
            max_state_bytes=max_awareness_state_bytes,
        )
        self.max_pending_bytes = max_pending_bytes
        #: Largest encoded state a write may grow the doc to (0: no limit).
        self.max_doc_bytes = max_doc_bytes
        #: An upper bound of the doc's encoded size: what was loaded plus every update
        #: integrated since (re-measured only when a write would pass the limit).
        self.size_bound = 0
        #: Updates (what of them the doc lacks) waiting for missing dependencies,
        #: with the connection id they came through (0: not a connection).
        self._pending: list[tuple[int, bytes]] = []
        self.pending_bytes = 0
        self.connections: dict[int, Connection] = {}
        self.state = RoomState.NEW
        self.load_error: BaseException | None = None
        self.loaded = anyio.Event()
        self.closed = anyio.Event()
        self.unload_settled = anyio.Event()
        self.compact_updates = compact_updates
        #: The newest update id of the doc this room knows committed (the store assigns
        #: ids at commit: learnt from each commit as it completes; 0: none).
        self.last_update_id = 0
        #: Whether the doc has anything in the store or queued for it (loaded from it,
        #: or appended to since): a doc that does not is not created by a compaction.
        self.stored = False
        self.logged_since_snapshot = 0
        self.compacting = False
        # One compaction at a time: an unload waits for a running one.
        self._compact_lock = anyio.Lock()
        self.store_failed = False
        self.last_activity = time.monotonic()
        self._on_store_failure = on_store_failure
        self._listener = listener
        #: Users of the room that are not connections (frame-feed viewers): while
        #: any hold it, it is not unloaded.
        self.holds = 0
        self._integrated: list[bytes] = []
        #: The cross-node side of the room (``None``: one node), see :mod:`rooms.replica`.
        self.replica: Replica | None = None
        # Held by yrs, out of sight of Python's cycle collector: dropped in _release().
        self._subscription = self.doc.observe(self._collect)

    def __repr__(self) -> str:
        return f"<Room {self.org}/{self.name!r} {self.state.value} conns={len(self.connections)}>"

    def _expect(self, *states: RoomState) -> None:
        if self.state not in states:
            expected = "|".join(s.value for s in states)
            raise RuntimeError(f"expected {expected}, got {self.state.value}")

    # -- lifecycle ---------------------------------------------------------------

    async def load(self) -> None:
        """Read the stored state into the doc (once). Sets :attr:`loaded` either way."""
        self._expect(RoomState.NEW)
        self.state = RoomState.LOADING
        started = time.perf_counter()
        try:
            stored = await self.store.load(self.org, self.name)
            if stored is not None:
                with self.doc.transaction(origin=Origin.STORE):
                    if stored.snapshot:
                        self.doc.apply_update(stored.snapshot)
                    for update in stored.updates:
                        self.doc.apply_update(update)
                self._integrated = []
                self.size_bound = len(stored.snapshot or b"") + sum(map(len, stored.updates))
                self.last_update_id = stored.last_update_id
                self.stored = stored.last_update_id != 0
                self.logged_since_snapshot = len(stored.updates)
        except Exception as exc:
            self.state = RoomState.FAILED
            self.load_error = exc
            log.error("room=%r org=%s failed to load: %s", self.name, self.org, exc)
        else:
            self.state = RoomState.LOADED
            log.debug(
                "room=%r org=%s loaded in %.1f ms (%d logged updates)",
                self.name,
                self.org,
                (time.perf_counter() - started) * 1000,
                self.logged_since_snapshot,
            )
        finally:
            self.loaded.set()

    def begin_unload(self) -> None:
        self._expect(RoomState.LOADED, RoomState.FAILED)
        self.state = RoomState.CLOSING
        self.unload_settled = anyio.Event()

    def _release(self) -> None:
        """Drop the doc observer so that the room and its doc can be freed."""
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None

    def mark_closed(self) -> None:
        """The room is done with (unloaded, or never loaded): free it."""
        self.state = RoomState.CLOSED
        self._release()
        self.closed.set()
        self.unload_settled.set()

    def cancel_unload(self) -> None:
        """Back to LOADED: the state could not be stored, so the room must stay."""
        self._expect(RoomState.CLOSING)
        self.state = RoomState.LOADED
        self.unload_settled.set()

    async def persist_all(self) -> None:
        """Make everything this room holds durable: compact it into a snapshot.

        The compaction is queued behind every earlier append of this room, and it
        writes the whole state, so it also covers appends whose commit failed. (A
        store-wide ``flush()`` would instead fail because of another room's writes.)
        A compaction already running is waited for first: it covers only the updates
        logged before it began, and the appends after it may still be queued.
        """
        await self.compact()

    def finish_unload(self) -> None:
        self._expect(RoomState.CLOSING)
        self.mark_closed()

    # -- connections -------------------------------------------------------------

    def join(self, conn: Connection) -> None:
        """Add ``conn`` and greet it: sync step1, then every known awareness state."""
        self._expect(RoomState.LOADED)
        conn.room_name = self.name
        self.connections[conn.id] = conn
        self.last_activity = time.monotonic()
        conn.enqueue(encode_sync_step1(self.doc.get_state()))
        states = self.awareness.current()
        if states:
            conn.enqueue(encode_awareness_update(states))

    def leave(self, conn: Connection) -> None:
        """Remove ``conn``; broadcast the removal of the awareness states it carried."""
        if self.connections.pop(conn.id, None) is None:
            return
        self.last_activity = time.monotonic()
        self.drop_presence(conn.id)

    def set_presence(self, owner: int, entry: AwarenessEntry) -> bool:
        """Publish an awareness state that no connection sent (a frame-feed viewer).

        Returns:
            ``False`` if the room is at ``--max-awareness-ids-per-room``: not published.
        """
        try:
            accepted = self.awareness.apply(owner, (entry,))
        except LimitExceeded as exc:
            log.warning("room=%r viewer %s not shown: %s", self.name, owner, exc.detail)
            return False
        if accepted:
            message = encode_awareness_update(accepted)
            self.broadcast(message)
            self._share_awareness(message)
            self._awareness_changed()
        return True

    def drop_presence(self, owner: int, *, share: bool = True) -> None:
        """Broadcast the removal of every awareness state ``owner`` carried.

        Args:
            share: Tell the other nodes too (not when ``owner`` stands for a node that
                is gone: every node removes its states by itself).
        """
        removals = self.awareness.remove_owner(owner)
        if removals:
            message = encode_awareness_update(removals)
            self.broadcast(message)
            if share:
                self._share_awareness(message)
            self._awareness_changed()

    def broadcast(
        self,
        message: bytes,
        exclude: Connection | None = None,
        received_at: float | None = None,
    ) -> int:
        """Queue the same ``message`` bytes on every connection but ``exclude``.

        Args:
            received_at: When the server received what this relays (for latency samples).
        """
        sent = written = 0
        for conn in list(self.connections.values()):
            if conn is exclude:
                continue
            if conn.write_direct(message):
                written += 1
            elif conn.enqueue(message, received_at):
                sent += 1
        if written:
            TRAFFIC.count_sent(message, written, received_at)
        return sent + written

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.close(code, reason)

    # -- messages from a connection ----------------------------------------------

    def on_sync_step1(self, conn: Connection, state_vector: bytes) -> None:
        try:
            update = self.doc.get_update(state_vector)
        except Exception as exc:
            raise InvalidUpdate(f"invalid state vector: {exc}") from exc
        conn.enqueue(encode_sync_step2(update))

    async def on_update(self, conn: Connection, update: bytes, frame: bytes | None) -> None:
        """Apply a client's update, relay what it changed to the others, log it.

        Only what the doc actually integrated is relayed and logged (as y-websocket's
        server relays ``doc.on('update')``): a duplicate changes nothing and goes
        nowhere, and a forged or partly pending update cannot make clients diverge
        from the server. When the change is the received update itself (the usual
        case) the received frame is relayed as is: encoded once for every receiver.

        Args:
            frame: The received message if it was a sync update (type 0/2), else ``None``.

        Raises:
            InvalidUpdate: pycrdt rejected it.
            LimitExceeded: it left the room holding more than ``max_pending_bytes`` of
                updates waiting for missing dependencies, the most of them from this
                connection: the pending state was dropped; close it (4413).
        """
        if update == EMPTY_UPDATE:
            return
        self.check_growth(len(update))
        if self._listener is not None:
            self._listener.room_changing(self, conn.actor, Origin.CLIENT)
        changes = self._apply(update, Origin.CLIENT, conn.id)
        # Told before the first wait (the store may make a writer wait for room): a
        # mutation of the record meanwhile must find this change pending, by its actor.
        if changes and self._listener is not None:
            self._listener.room_changed(self, conn.actor, Origin.CLIENT)
        for change in changes:
            message = frame if frame is not None and change == update else None
            self.broadcast(message or encode_sync_update(change), conn, conn.last_received)
            await self._log(change, conn.actor)
        self._bound_pending(conn.id)

    async def apply_update(self, update: bytes, *, actor: str, origin: Origin) -> Appended | None:
        """Apply an update that did not come through a connection (HTTP); broadcast to all.

        Returns:
            The log entry of the change, or ``None`` if the update changed nothing.

        Raises:
            InvalidUpdate: pycrdt rejected it.
            LimitExceeded: what of it waits for missing dependencies put the room past
                ``max_pending_bytes`` (the pending state was dropped; what could be
                applied was, and is logged).
        """
        self._expect(RoomState.LOADED)
        if update == EMPTY_UPDATE:
            return None
        self.check_growth(len(update))
        appended = None
        if self._listener is not None:
            self._listener.room_changing(self, actor, origin)
        changes = self._apply(update, origin, 0)
        if changes and self._listener is not None:
            self._listener.room_changed(self, actor, origin)
        for change in changes:
            self.broadcast(encode_sync_update(change))
            appended = await self._log(change, actor)
        self._bound_pending(0)
        return appended

    async def change(
        self,
        fn: Callable[[Doc], None],
        *,
        actor: str,
        origin: Origin = Origin.MUTATION,
        frames: Callable[[], FrameBatch | None] | None = None,
    ) -> Appended | None:
        """Run ``fn(doc)`` in one transaction; broadcast and log what it changed.

        Nothing between the change and the store append yields to the event loop, so
        ``frames()`` (called after the change) sees exactly this change, and the frames
        it returns are committed in the update's transaction. The listener is not told:
        whoever calls this frames the change itself.

        Returns:
            The log entry, or ``None`` if nothing changed.

        Raises:
            Whatever ``fn`` raised, once what it did before failing is shared and
            logged (Yjs has no rollback) and the listener told of it.
        """
        self._expect(RoomState.LOADED)
        self._integrated = []
        failure: Exception | None = None
        try:
            with self.doc.transaction(origin=origin):
                fn(self.doc)
        except Exception as exc:
            failure = exc
        integrated, self._integrated = self._integrated, []
        if not integrated:
            if failure is not None:
                raise failure
            return None
        self.last_activity = time.monotonic()
        update = integrated[0] if len(integrated) == 1 else merge_updates(*integrated)
        self.size_bound += len(update)
        self.broadcast(encode_sync_update(update))
        if failure is not None:
            if self._listener is not None:
                self._listener.room_changed(self, actor, origin)
            await self._log(update, actor)
            raise failure
        batch = frames() if frames is not None else None
        return await self._log(update, actor, frames=batch)

    def check_growth(self, incoming: int) -> None:
        """Refuse a write of ``incoming`` bytes that could grow the doc past
        ``max_doc_bytes``, before anything of it is applied (the doc stays intact).

        Cheap while the doc is well below the limit (a running upper bound); near it,
        the state is encoded once per write to measure it exactly.

        Raises:
            LimitExceeded: ``doc_too_large`` (close 4413; HTTP 413).
        """
        limit = self.max_doc_bytes
        if not limit or self.size_bound + incoming <= limit:
            return
        self.size_bound = len(self.doc.get_update())
        if self.size_bound + incoming <= limit:
            return
        raise LimitExceeded(
            CloseCode.DOC_TOO_LARGE,
            "doc_too_large",
            f"a write of {incoming} bytes would grow the document ({self.size_bound} bytes) "
            f"past --max-doc-bytes ({limit})",
        )

    def on_awareness(self, conn: Connection, entries: tuple[AwarenessEntry, ...], frame: bytes):
        """Record and relay awareness to every connection, the sender included.

        The sender gets its own update back: y-websocket clients treat any incoming
        message as a keep-alive and reconnect after 30 s of silence.

        Raises:
            LimitExceeded: too many awareness client ids (close the sender, 4460);
                nothing of the message was recorded or relayed.
        """
        accepted = self.awareness.apply(conn.id, entries)
        self.broadcast(frame, None, conn.last_received)
        self._share_awareness(frame)
        if accepted:
            self._awareness_changed()

    # -- messages from other nodes (rooms.replica) -------------------------------

    def apply_remote(self, update: bytes, *, actor: str | None) -> None:
        """Apply an update another node committed: relay what it changed to this
        node's connections; do not log it (it is stored already). ``actor``: who
        made it (``None``: unknown, read back from the store).

        Raises:
            InvalidUpdate: pycrdt rejected it.
        """
        if update == EMPTY_UPDATE or self.state is not RoomState.LOADED:
            return
        if self._listener is not None:
            self._listener.room_changing(self, actor, Origin.REMOTE)
        changes = self._apply(update, Origin.REMOTE, REMOTE_OWNER)
        if changes and self._listener is not None:
            self._listener.room_changed(self, actor, Origin.REMOTE)
        for change in changes:
            self.broadcast(encode_sync_update(change))

    def remote_awareness(
        self, owner: int, entries: tuple[AwarenessEntry, ...], message: bytes
    ) -> None:
        """Record awareness relayed by another node (``owner`` stands for that node)
        and relay it to this node's connections. The per-connection limit was the
        origin node's to enforce; the room's limit holds here too."""
        try:
            accepted = self.awareness.apply(owner, entries, per_owner_limit=False)
        except LimitExceeded as exc:
            log.warning("room=%r awareness from another node not shown: %s", self.name, exc.detail)
            return
        self.broadcast(message)
        if accepted:
            self._awareness_changed()

    def on_query_awareness(self, conn: Connection) -> None:
        conn.enqueue(encode_awareness_update(self.awareness.current()))

    # -- internals ---------------------------------------------------------------

    def _share_awareness(self, message: bytes) -> None:
        if self.replica is not None:
            self.replica.awareness(message)

    def _awareness_changed(self) -> None:
        if self._listener is not None:
            self._listener.room_awareness(self)

    def _collect(self, event: Any) -> None:
        self._integrated.append(event.update)

    def _apply(self, update: bytes, origin: Origin, owner: int) -> list[bytes]:
        """Apply ``update`` (from connection ``owner``, 0 if none); return the updates
        the doc integrated (usually one), and note what of it is left pending."""
        self._integrated = []
        try:
            with self.doc.transaction(origin=origin):
                self.doc.apply_update(update)
        except Exception as exc:
            raise InvalidUpdate(str(exc) or type(exc).__name__) from exc
        except BaseException as exc:
            # A Rust panic in yrs surfaces as pyo3's PanicException, a BaseException:
            # it is still just a bad update from one client, not a reason to stop.
            if type(exc).__name__ != "PanicException":
                raise
            raise InvalidUpdate(f"update crashed the decoder: {exc}") from None
        self.last_activity = time.monotonic()
        integrated, self._integrated = self._integrated, []
        self.size_bound += sum(map(len, integrated))
        if not (len(integrated) == 1 and integrated[0] == update):
            # Not integrated whole, as it came (which is the usual case): some of it
            # may be pending.
            self._note_pending(owner, update, resolved=bool(integrated))
        elif self._pending:
            self._note_pending(owner, None, resolved=True)
        return integrated

    def _note_pending(self, owner: int, update: bytes | None, *, resolved: bool) -> None:
        """Track the bytes the doc holds for updates with missing dependencies.

        Args:
            update: What was just applied (``None``: it was integrated whole).
            resolved: The doc integrated something: re-check what was pending.
        """
        state: bytes | None = None
        if resolved and self._pending:
            state = self.doc.get_state()
            still = []
            for who, missing in self._pending:
                left = missing_part(missing, state)
                if left is not None:
                    still.append((who, left))
            self._pending = still
        if update is not None:
            missing = missing_part(update, state or self.doc.get_state())
            if missing is not None:
                self._pending.append((owner, missing))
        self.pending_bytes = sum(len(missing) for _, missing in self._pending)

    def _bound_pending(self, owner: int) -> None:
        """Past ``max_pending_bytes``: drop all pending state, close the main offender.

        Raises:
            LimitExceeded: ``owner`` (the sender of what was just applied) is the
                connection that holds the most of it.
        """
        if (
            self.pending_bytes <= self.max_pending_bytes
            and len(self._pending) <= MAX_PENDING_UPDATES
        ):
            return
        shares: dict[int, int] = {}
        for who, missing in self._pending:
            shares[who] = shares.get(who, 0) + len(missing)
        offender = max(shares, key=lambda who: shares[who])
        held = self.pending_bytes
        self._drop_pending()
        # Whoever else had updates pending: send them step 1, so that once their
        # dependencies are here they send again what was dropped (no silent desync).
        probe = encode_sync_step1(self.doc.get_state())
        for who in shares.keys() - {offender}:
            if (other := self.connections.get(who)) is not None:
                other.enqueue(probe)
        detail = (
            f"updates waiting for missing dependencies exceed {self.max_pending_bytes} "
            f"bytes (--max-pending-bytes) or {MAX_PENDING_UPDATES} updates; they were dropped"
        )
        log.warning(
            "room=%r holds %d bytes of pending updates (%d from conn %s): dropped",
            self.name,
            held,
            shares[offender],
            offender,
        )
        if offender == owner:
            raise LimitExceeded(CloseCode.PENDING_TOO_LARGE, "pending_too_large", detail)
        conn = self.connections.get(offender)
        if conn is not None:
            conn.close(CloseCode.PENDING_TOO_LARGE, detail)

    def _drop_pending(self) -> None:
        """Replace the doc by one holding only its integrated state (yrs has no way to
        forget pending structs). Nothing integrated changes, so no client is affected."""
        state = self.doc.get_update()
        doc = Doc()
        doc.apply_update(state)
        self._release()
        self.doc = doc
        self._subscription = doc.observe(self._collect)
        self._pending = []
        self.pending_bytes = 0

    async def _log(self, update: bytes, actor: str, frames: FrameBatch | None = None) -> Appended:
        """Append an update the doc holds (already applied and relayed) to the store.

        Shielded when it waits (the store may make a writer wait for room in its
        queue; usually it queues at once, and a shield on every call costs): a reader
        cancelled there (its connection closed) must not leave the update applied but
        neither logged nor counted: an unload would then not wait for it, and the next
        compaction would drop it.
        """
        coro = self.store.append(
            self.org, self.name, update, actor=actor, at=now_ms(), frames=frames
        )
        done, result = step(coro)  # the usual case: queued without suspending
        if not done:
            with anyio.CancelScope(shield=True):
                result = await finish(coro, result)
        appended: Appended = result
        self.stored = True
        self.logged_since_snapshot += 1
        if self.replica is None:
            watch_durable(appended, self._durable_failed, self._committed)
        else:
            replica = self.replica

            def committed(committed: Committed) -> None:
                self._committed(committed)
                replica.committed(committed, update, actor)

            watch_durable(appended, self._durable_failed, committed)
        return appended

    def _committed(self, committed: Committed) -> None:
        # Commits complete in queue order; max() all the same (cheap, and order-proof).
        self.last_update_id = max(self.last_update_id, committed.update_id)

    def _durable_failed(self, exc: BaseException) -> None:
        self.store_failed = True
        if self._on_store_failure is not None:
            self._on_store_failure(self, exc)

    @property
    def is_empty(self) -> bool:
        """Nothing stored and nothing in the doc: the document does not exist yet."""
        return not self.stored and self.doc.get_state() == b"\x00"

    @property
    def wants_compaction(self) -> bool:
        return not self.compacting and self.logged_since_snapshot >= self.compact_updates

    async def compact(self, *, force: bool = False) -> None:
        """Fold the log into a snapshot of the current state (one store transaction).

        Waits for a compaction already running, then compacts what is left. Returns
        once the snapshot is committed, and with it every append of this room queued
        before it: the store drops exactly the log rows queued before the compaction,
        and the snapshot is the whole state, so it also covers appends whose commit
        failed (and the store merges in whatever else it drops).

        Args:
            force: Write the snapshot even if nothing was logged since the last one.
                (Forced as well after a failed commit: the log may lack what the doc
                holds.)
        """
        async with self._compact_lock:
            if self.state is RoomState.CLOSED:
                return  # unloaded or deleted meanwhile: a snapshot would bring it back
            force = force or self.store_failed
            if not force and self.logged_since_snapshot == 0 and self.stored:
                return
            self.compacting = True
            try:
                covered = self.logged_since_snapshot
                state = self.doc.get_update()
                if not self.stored and state == EMPTY_UPDATE:
                    return  # never stored, nothing to store: do not create an empty doc
                failed_before = self.store_failed
                await self.store.compact(self.org, self.name, state)
                self.logged_since_snapshot -= covered
                if failed_before:
                    self.store_failed = False
                log.debug(
                    "room=%r compacted %d updates (newest id %d)",
                    self.name,
                    covered,
                    self.last_update_id,
                )
            finally:
                self.compacting = False


def watch_durable(
    appended: Appended,
    on_error: Callable[[BaseException], None],
    on_committed: Callable[[Committed], None] | None = None,
) -> None:
    """Call ``on_error`` if the commit holding ``appended`` fails, else ``on_committed``
    with what it committed, without awaiting it."""

    def done(fut: Any) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            if on_committed is not None:
                on_committed(fut.result())
        elif isinstance(exc, StoreError):
            on_error(exc)

    appended.durable.add_done_callback(done)
