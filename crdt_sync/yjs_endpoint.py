"""``ws://HOST:PORT/yjs/{doc}``: the y-websocket endpoint.

A raw ASGI app (no per-message Starlette wrapper objects on the hot path). For each
connection: validate the doc name, accept, join the room (which waits for the
stored state), then read: the receive loop below decodes each frame and hands it
to the room in arrival order, until the client leaves or the connection is closed
(a close from any task cancels the read). The connection's writes need no task of
their own (``rooms.connection``): an idle connection costs no task but this one.

Auth (the front door has admitted the connection for ``read`` on the doc):

- the connection runs as ``principal_of(scope)``: its org picks the room (the same
  doc name in two orgs is two docs), its actor is ``who``;
- a principal whose grant does not reach ``write`` on the doc is *read-only*: it
  syncs, sees and publishes awareness, but every document update it sends (a sync
  update, or a step 2 carrying structs) is dropped: not applied, not relayed,
  counted (``crdt_sync_readonly_updates_refused``) and logged once per connection;
- at the principal's ``expires_at`` the connection is closed with 4401 (the client
  reconnects with a fresh token); ``POST /admin/revoke`` closes it the same way
  (it is registered in ``runtime.sessions``);
- more than ``--rate-limit-ws-messages`` messages per ``--rate-limit-window`` from
  one actor (one IP while open) close the connection with 4429.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from pycrdt import get_state

from persistence.store import StoreError
from rooms.close_codes import CloseCode
from rooms.codec import (
    LARGE_UPDATE_BYTES,
    Auth,
    AwarenessUpdate,
    InvalidPayload,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode_message,
)
from rooms.connection import Connection
from rooms.limits import LimitExceeded
from rooms.manager import RoomManager, ShuttingDown, TooManyRooms
from rooms.room import EMPTY_UPDATE, InvalidUpdate, Room, RoomLoadError
from rooms.stats import TRAFFIC

from .asgi import Scope, WsBinaryTransport, deny_handshake, drain_websocket, json_body, peer
from .auth.principal import Principal, principal_of
from .docnames import InvalidDocName, validate_doc_name
from .errors import store_failure
from .front_door import SUBPROTOCOL_KEY
from .settings import Settings

log = logging.getLogger(__name__)

#: How long a client found gone (a write to it failed) is still read, for what it sent
#: before it went; its disconnect, which the ASGI server queues behind those messages,
#: normally ends the reading at once.
PEER_GONE_READ_SECONDS = 5.0


class YjsEndpoint:
    """The ASGI app mounted at ``/yjs/{doc:path}``."""

    def __init__(self, settings: Settings, runtime: Any) -> None:
        self.settings = settings
        self.runtime = runtime  # crdt_sync.app.Runtime: manager, shutting_down

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        raw_name = scope["path_params"]["doc"]
        try:
            name = validate_doc_name(raw_name)
        except InvalidDocName as exc:
            log.warning("peer=%s refused ws for doc %r: %s", peer(scope), raw_name[:100], exc)
            await self._deny(scope, receive, send, 400, "invalid_doc_name", str(exc))
            return
        principal = principal_of(scope)
        accept: dict[str, Any] = {"type": "websocket.accept"}
        subprotocol = scope.get(SUBPROTOCOL_KEY)
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        settings = self.settings
        conn = Connection(
            WsBinaryTransport(send),
            actor=principal.actor,
            peer=peer(scope),
            max_messages=settings.send_queue_messages,
            max_bytes=settings.send_queue_bytes,
        )
        conn.room_name = name
        manager: RoomManager = self.runtime.manager
        org = principal.org
        try:
            room = await manager.join(org, name, conn)
        except (RoomLoadError, ShuttingDown, TooManyRooms) as exc:
            if isinstance(exc, TooManyRooms):
                log.warning("conn=%s room=%r refused: %s", conn.id, name, exc)
                conn.close(CloseCode.TRY_AGAIN_LATER, "too many rooms loaded, try again later")
            elif isinstance(exc, RoomLoadError) and store_failure(exc) is not None:
                # Logged by the room; the doc is fine, the store cannot be read now.
                log.warning("conn=%s room=%r refused: the store is unavailable", conn.id, name)
                conn.close(CloseCode.STORE_UNAVAILABLE, "the store is unavailable, try again later")
            elif isinstance(exc, RoomLoadError):
                log.error("conn=%s room=%r cannot be served: %s", conn.id, name, exc)
                conn.close(CloseCode.LOAD_FAILED, "document failed to load")
            else:
                conn.close(CloseCode.GOING_AWAY, "server shutting down")
            await conn.run()
            await drain_websocket(receive)
            return
        writer = principal.grant.allows(name, "write")
        log.info(
            "conn=%s room=%r org=%r actor=%s peer=%s connected%s",
            conn.id,
            name,
            org,
            conn.actor,
            conn.peer,
            "" if writer else " read-only",
        )
        # Read by the handshake only (auth, origin, limits): an open connection need not
        # keep a copy of every request header (uvicorn's scope lives as long as it does).
        scope["headers"] = ()
        session = self.runtime.sessions.register(principal, name, conn.close)
        try:
            # This task reads; writes happen in whichever task relays (see
            # rooms.connection). A close by the server stops the reading. A client
            # found gone (a write to it failed) may still have messages received and
            # not yet read, such as an edit sent just before it closed its tab: they
            # are read on, until its disconnect (bounded by PEER_GONE_READ_SECONDS).
            with anyio.CancelScope() as reading:

                def stop_reading() -> None:
                    if not conn.closed_by_peer:
                        reading.cancel()
                    else:
                        reading.deadline = min(
                            reading.deadline, anyio.current_time() + PEER_GONE_READ_SECONDS
                        )

                conn.on_close(stop_reading)
                left = principal.seconds_left(time.time())
                if left is not None:
                    reading.deadline = min(
                        reading.deadline, anyio.current_time() + max(0.0, left)
                    )
                reader = _Reader(self, conn, room, manager, principal, scope, writer)
                await reader.loop(receive)
            if reading.cancelled_caught and not conn.closing:
                self._refuse(conn, CloseCode.UNAUTHORIZED, "token expired")
            await conn.run()  # closed by now: finish a pending write, send the close frame
            if not conn.closed_by_peer:
                await drain_websocket(receive)
        finally:
            self.runtime.sessions.unregister(session)
            manager.leave(room, conn)
            if conn.closed_by_peer:
                log.info("conn=%s room=%r actor=%s disconnected", conn.id, name, conn.actor)
            else:
                log.info(
                    "conn=%s room=%r actor=%s closed by server code=%s reason=%s",
                    conn.id,
                    name,
                    conn.actor,
                    conn.close_code,
                    conn.close_reason,
                )

    async def _deny(
        self, scope: Scope, receive: Any, send: Any, status: int, error: str, detail: str
    ) -> None:
        """Refuse the handshake with an HTTP JSON error where the server supports it
        (else close 4400)."""
        body = json_body(error, detail)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await deny_handshake(
            scope, receive, send, status, headers, body, error, fallback_code=CloseCode.BAD_REQUEST
        )

    def _refuse(self, conn: Connection, code: int, reason: str) -> None:
        log.warning(
            "conn=%s room=%r actor=%s peer=%s closing %d: %s",
            conn.id,
            conn.room_name,
            conn.actor,
            conn.peer,
            code,
            reason,
        )
        conn.close(code, reason)


class _Reader:
    """One connection's receive loop: decode each frame, hand it to the room in order."""

    def __init__(
        self,
        endpoint: YjsEndpoint,
        conn: Connection,
        room: Room,
        manager: RoomManager,
        principal: Principal,
        scope: Scope,
        writer: bool,
    ) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.room = room
        self.manager = manager
        self.writer = writer
        self.limiter = endpoint.runtime.ws_limiter
        client = scope.get("client")
        self.limit_key = principal.limit_key(str(client[0]) if client else None)
        self.refused_updates = 0

    async def loop(self, receive: Any) -> None:
        conn = self.conn
        refuse = self.endpoint._refuse
        max_bytes = self.endpoint.settings.max_message_bytes
        limiter = self.limiter
        # Past a close by the peer, what it sent before it went is still handled.
        while not conn.closing or conn.closed_by_peer:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                conn.peer_closed(event.get("code", CloseCode.NORMAL))
                return
            frame = event.get("bytes")
            if frame is None:
                refuse(conn, CloseCode.UNSUPPORTED_DATA, "text frames are not supported")
                return
            conn.touch()
            TRAFFIC.count_received(frame)
            if len(frame) > max_bytes:
                refuse(
                    conn, CloseCode.MESSAGE_TOO_BIG, f"message of {len(frame)} bytes > {max_bytes}"
                )
                return
            if limiter is not None:
                ok, retry = limiter.allow(self.limit_key, time.monotonic())
                if not ok:
                    reason = (
                        f"more than {limiter.limit} messages per {limiter.window:g} s; "
                        f"retry in {retry:.1f} s"
                    )
                    logging.getLogger("crdt_sync.audit").warning(
                        "refused ws messages conn=%s room=%r org=%r actor=%r peer=%s -> "
                        "close 4429 (rate_limited: %s)",
                        conn.id,
                        self.room.name,
                        self.room.org,
                        conn.actor,
                        conn.peer,
                        reason,
                    )
                    conn.close(CloseCode.RATE_LIMITED, reason)
                    return
            try:
                await self._handle(frame)
            except InvalidPayload as exc:
                refuse(conn, CloseCode.INVALID_PAYLOAD, f"refused message: {exc}")
            except ProtocolError as exc:
                refuse(conn, CloseCode.PROTOCOL_ERROR, f"malformed message: {exc}")
            except InvalidUpdate as exc:
                refuse(conn, CloseCode.INVALID_PAYLOAD, f"update rejected: {exc}")
            except LimitExceeded as exc:
                refuse(conn, exc.code, exc.detail)
            except StoreError as exc:
                refuse(conn, CloseCode.STORE_UNAVAILABLE, f"update not stored: {exc}")
            except Exception:
                log.exception("conn=%s room=%r internal error", conn.id, self.room.name)
                conn.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _refuse_update(self, kind: str) -> None:
        """A read-only connection sent a document update: dropped, counted, logged once."""
        self.refused_updates += 1
        self.endpoint.runtime.readonly_refused += 1
        if self.refused_updates == 1:
            logging.getLogger("crdt_sync.audit").warning(
                "refused ws update conn=%s room=%r org=%r actor=%r peer=%s: read-only "
                "grant (%s dropped; further ones on this connection only counted)",
                self.conn.id,
                self.room.name,
                self.room.org,
                self.conn.actor,
                self.conn.peer,
                kind,
            )

    async def _handle(self, frame: bytes) -> None:
        conn, room, manager = self.conn, self.room, self.manager
        if len(frame) > LARGE_UPDATE_BYTES:
            # Off the event loop: other rooms do not wait while a big update is checked.
            message = await anyio.to_thread.run_sync(decode_message, frame)
        else:
            message = decode_message(frame)
        match message:
            case SyncUpdate(update):
                if not self.writer:
                    if update != EMPTY_UPDATE:
                        self._refuse_update("update")
                    return
                await room.on_update(conn, update, frame)
                manager.after_update(room)
            case SyncStep2(update):
                if not self.writer:
                    # A reader answers the server's step 1 with what it has that the
                    # server lacks: usually nothing (only a delete set); structs are edits.
                    if update != EMPTY_UPDATE and _has_structs(update):
                        self._refuse_update("sync step 2")
                    return
                await room.on_update(conn, update, None)
                manager.after_update(room)
            case SyncStep1(state_vector):
                room.on_sync_step1(conn, state_vector)
            case AwarenessUpdate(entries):
                room.on_awareness(conn, entries, frame)
            case QueryAwareness():
                room.on_query_awareness(conn)
            case Auth():
                log.debug("conn=%s ignoring auth message from client", conn.id)


def _has_structs(update: bytes) -> bool:
    """Whether ``update`` carries any item (its state vector is not empty)."""
    try:
        return get_state(update) != b"\x00"
    except Exception:
        return True  # not decodable: count it as a refused edit, never apply it
