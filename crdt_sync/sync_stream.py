"""The live SyncFrame feed: ``WS /sync/v1/ws`` and ``GET /sync/v1/events`` (SSE).

Ordering rule owned here (with each :class:`~rooms.feed_hub.FeedSubscriber`'s
cursor): *what a subscriber has seen*. Frames come from the store (catch-up) and the
node's :class:`~rooms.frame_bus.FrameBus` (live) only, never from this node's writers,
so a subscriber cannot tell which node committed a frame.

Both take ``?since=SID`` (SSE: or ``Last-Event-ID``, which wins) and ``?t=TYPE``,
send every frame after ``since`` from the store, then live frames, with no gap and
no duplicate across the boundary (see :mod:`rooms.feed_hub`). Without ``since``
they start at the newest frame. A ``since`` older than the retained log (or ahead
of it) gets ``since_too_old``: HTTP 410 for SSE; on the WebSocket an error message
and close 4410, which browsers can read (they cannot read a refused handshake).
If the log is trimmed past a subscriber while it catches up (it reads slowly from an
old ``since`` while writes go on), it gets that same ``since_too_old`` body, with the
bootstrap cursor, as its last message (WebSocket: then close 4410; SSE: as an
``event: error``, then the stream ends): what a subscriber receives is gap-free and
strictly increasing, or ends with that reset.

WebSocket messages, text JSON both ways:

* server → client: a JSON **array** of frames, or an **object** with a ``type``:
  ``pong`` (``{expires_in}``), ``auth`` (``{ok, expires_in}``), ``presence``
  (``{t, id, present}``), ``error`` (``{error, detail}``);
* client → server: ``{"type": "ping"}``; ``{"type": "auth", "token"}`` (renew, see
  below); ``{"type": "view", "t", "id", "state"?}``
  (appear in the record's awareness and receive its presence); ``{"type": "watch",
  "t", "id"}`` (receive its presence only); ``{"type": "leave", "t", "id"}``.
  One connection views or watches at most ``--max-views-per-connection`` records at
  once (each view holds a room loaded); one more gets an ``error`` message
  ``too_many_views`` and close 4461.

A client silent for ``--ping-timeout`` seconds is closed with 4408 (clients ping
every 15 s). A subscriber that does not read is closed with 4429 (WebSocket) or its
stream ended (SSE); it resumes with ``since``.

Auth: both streams run under the principal the front door put in the scope
(:func:`~crdt_sync.auth.principal.principal_of`). Frames, catch-up, presence and the
sid bounds are those of its org, and only frames of records its grant covers are
sent (``view``/``watch`` of another record: an ``error`` message ``forbidden``, the
feed stays open). The ``pong`` answer carries ``expires_in`` (whole seconds the
token has left, ``null`` if it does not expire); so do SSE keep-alive comments
(``: keep-alive expires_in=N``). At the token's ``exp`` the WebSocket gets an
``error`` message ``token_expired`` and close 4401 (SSE: that error event, then the
stream ends), unless it was renewed in band before with
``{"type": "auth", "token": "..."}``: the new token must be of the same org and
actor (else ``error`` ``forbidden`` and close 4403; a bad token: ``error`` and close
4401); it replaces the grant and the expiry, keeps the cursor, and is answered
``{"type": "auth", "ok": true, "expires_in": N | null}``. Every subscriber is a
session of ``runtime.sessions`` (``/admin/revoke`` closes it with 4401), and every
client message counts against ``runtime.ws_limiter`` for the principal (past it:
``error`` ``rate_limited`` with ``retry_after``, close 4429).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio

from persistence.store import Store, StoreError
from rooms.close_codes import CloseCode
from rooms.connection import Connection
from rooms.feed_hub import FeedHub, FeedSubscriber
from rooms.limits import LimitExceeded
from rooms.manager import ShuttingDown, TooManyRooms
from rooms.room import RoomLoadError

from .asgi import (
    AsgiApp,
    Scope,
    WsTextTransport,
    client_ip,
    drain_websocket,
    json_body,
    peer,
    query_params,
    send_json_response,
)
from .auth.authenticator import AuthError
from .auth.principal import Principal, principal_of
from .auth.sessions import Session
from .docnames import InvalidDocName, validate_doc_name
from .front_door import SUBPROTOCOL_KEY
from .http_api import ApiError
from .inputs import InputError, parse_json
from .presence import RecordNotFound
from .records import pages
from .records.wire import encode_json_array, encode_json_event, encode_sse, encode_sse_event
from .sync_api import parse_sid, parse_type, record_type_error, too_old

log = logging.getLogger(__name__)

#: Frames per catch-up read (and per catch-up message).
CATCHUP_PAGE = 500
#: Largest client message on the frame WebSocket.
MAX_CLIENT_MESSAGE = 64 * 1024
#: SSE keep-alive comment interval (proxies drop idle streams after 30-60 s).
SSE_KEEPALIVE_SECONDS = 15.0


def error_event(exc: ApiError) -> dict[str, Any]:
    """An :class:`ApiError` as a message on the frame WebSocket."""
    return {"type": "error", "error": exc.error, "detail": exc.detail, **exc.extra}


def expires_in(principal: Principal, now: float | None = None) -> int | None:
    """Whole seconds ``principal``'s token has left (never negative), ``None`` if it
    does not expire: what ``pong`` and the SSE keep-alive tell the client."""
    left = principal.seconds_left(time.time() if now is None else now)
    return None if left is None else max(0, math.floor(left))


class FeedSession:
    """The principal one feed connection runs under, registered in ``runtime.sessions``
    (so that ``/admin/revoke`` closes it), renewable in band.

    Args:
        principal: Who the front door admitted.
        sub: The subscriber; its grant filter follows the principal.
        runtime: Where ``sessions`` is.
    """

    def __init__(self, principal: Principal, sub: FeedSubscriber, runtime: Any) -> None:
        self.principal = principal
        self.sub = sub
        self._sessions = runtime.sessions
        self._session: Session | None = self._sessions.register(principal, None, self._revoked)
        self.renewed = anyio.Event()

    def _revoked(self, code: int, reason: str) -> None:
        conn = self.sub.conn
        log.info("conn=%s actor=%r frame feed revoked: %s", conn.id, self.principal.actor, reason)
        error = {"type": "error", "error": "revoked", "detail": reason}
        conn.close_after(self.sub.encode_event(error), code, reason)

    def renew(self, principal: Principal) -> None:
        """Run under ``principal`` from now on (same org and actor, checked by the caller)."""
        self.principal = principal
        self.sub.docs = principal.grant
        if self._session is not None:
            self._session = self._sessions.update(self._session, principal)
        self.renewed.set()
        self.renewed = anyio.Event()

    def end(self) -> None:
        if self._session is not None:
            self._sessions.unregister(self._session)
            self._session = None

    async def enforce_expiry(self) -> None:
        """Close the connection at the principal's ``expires_at`` (4401, after an
        ``error`` ``token_expired``), unless it is renewed first; then watch the new one."""
        conn = self.sub.conn
        while not conn.closing:
            renewed = self.renewed
            left = self.principal.seconds_left(time.time())
            with anyio.move_on_after(None if left is None else max(0.0, left)):
                await renewed.wait()
                continue
            log.info(
                "conn=%s actor=%r frame feed token expired, closing 4401",
                conn.id,
                self.principal.actor,
            )
            error = {
                "type": "error",
                "error": "token_expired",
                "detail": "the token expired: reconnect (or renew in band) with a fresh one",
            }
            conn.close_after(self.sub.encode_event(error), CloseCode.UNAUTHORIZED, "token expired")
            return


async def catch_up(
    store: Store,
    hub: FeedHub,
    sub: FeedSubscriber,
    page_size: int = CATCHUP_PAGE,
    *,
    follow: Callable[[str, int], None] | None = None,
    tx_reach: int = 2001,
) -> None:
    """Send what ``sub`` missed from the store, then switch it to live frames.

    ``follow(org, newest)`` tells the frame bus where this org's log stood when the
    subscriber caught up, so that a bus that has not seen the org yet delivers every
    frame after it (:meth:`rooms.frame_bus.FrameBus.follow`).

    Every page is checked against the log's bounds read in the same transaction: if
    frames after ``sub.last_sid`` were trimmed meanwhile (a slow reader of an old
    ``since`` while writes go on), the subscriber is sent an explicit reset (the
    ``since_too_old`` body that ``delta`` answers with 410) and closed with 4410,
    never a page that silently skips them.

    Raises:
        ApiError: ``since_too_old``, after the reset was queued on ``sub``.
    """
    hub.subscribe(sub)
    while not sub.conn.closing:
        # A page never ends inside a mutation request's frames (one message each).
        page = await pages.read_page(
            store, sub.org, sub.last_sid, limit=page_size, t=sub.t, reach=tx_reach
        )
        if not page.oldest <= sub.last_sid <= page.newest:
            exc = too_old(sub.last_sid, page.oldest, page.newest, sub.t)
            hub.unsubscribe(sub)
            sub.reset(error_event(exc), CloseCode.SINCE_TOO_OLD, exc.error)
            raise exc
        # Frames of records outside its grant are skipped, its cursor moves past them.
        sub.deliver(page.frames)
        if not page.more:
            sub.caught_up_to(page.newest)
            if follow is not None:
                follow(sub.org, page.newest)
            if sub.go_live():
                return
        # Let the client read before the next page: never queue a whole log.
        await sub.conn.wait_idle()


class SseTransport:
    """``rooms.Transport`` writing queued messages into a streaming HTTP response."""

    __slots__ = ("_send",)

    def __init__(self, send: Any) -> None:
        self._send = send

    async def send(self, message: bytes) -> None:
        await self._send({"type": "http.response.body", "body": message, "more_body": True})

    async def close(self, code: int, reason: str) -> None:
        body = encode_sse_event({"type": "error", "error": f"closed_{code}", "detail": reason})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


class FrameStreams:
    """The two live feed endpoints, sharing the app's runtime."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def routes(self) -> list[Any]:
        from starlette.routing import Route, WebSocketRoute

        return [
            WebSocketRoute("/sync/v1/ws", AsgiApp(self.websocket)),
            Route("/sync/v1/events", AsgiApp(self.sse), methods=["GET"]),
        ]

    # -- shared --------------------------------------------------------------------

    def _connection(
        self, transport: Any, scope: Scope, what: str, principal: Principal
    ) -> Connection:
        """A subscriber's bounded send queue, with the same bounds as an editor's."""
        settings = self.runtime.settings
        conn = Connection(
            transport,
            actor=principal.actor,
            peer=peer(scope),
            max_messages=settings.send_queue_messages,
            max_bytes=settings.send_queue_bytes,
        )
        conn.room_name = what
        return conn

    async def _start_point(self, org: str, since: int | None, t: str | None) -> int:
        """``since`` checked against ``org``'s retained log (the newest sid if ``None``)."""
        oldest, newest = await self.runtime.store.frame_bounds(org)
        if since is None:
            return newest
        if since < oldest or since > newest:
            raise too_old(since, oldest, newest, t)
        return since

    async def _catch_up(self, sub: FeedSubscriber) -> None:
        runtime = self.runtime
        await catch_up(
            runtime.store,
            runtime.hub,
            sub,
            follow=runtime.frame_bus.follow,
            tx_reach=pages.tx_reach(runtime.settings.max_mutations),
        )

    # -- WebSocket -------------------------------------------------------------------

    async def websocket(self, scope: Scope, receive: Any, send: Any) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        principal = principal_of(scope)
        await send(accept_message(scope))
        conn = self._connection(WsTextTransport(send), scope, "sync/v1/ws", principal)
        query = query_params(scope)
        sub: FeedSubscriber | None = None
        try:
            t = parse_type(query.get("t"))
            since = parse_sid(query.get("since"), "since")
            if self.runtime.shutting_down:
                raise ShuttingDown("server shutting down")
            start = await self._start_point(principal.org, since, t)
            sub = FeedSubscriber(
                conn,
                principal.org,
                t=t,
                since=start,
                encode=encode_json_array,
                encode_event=encode_json_event,
                docs=principal.grant,
            )
            sub.all_presence = query.get("presence") == "all"
        except ApiError as exc:
            log.info("conn=%s peer=%s frame feed refused: %s", conn.id, conn.peer, exc.detail)
            conn.close_after(encode_json_event(error_event(exc)), 4000 + exc.status, exc.error)
        except ShuttingDown:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        except StoreError as exc:
            log.error("conn=%s frame feed cannot read the store: %s", conn.id, exc)
            conn.close(CloseCode.STORE_UNAVAILABLE, "frame log unavailable")
        if sub is None:
            # The close frame follows the error message once the sender drains.
            await self._finish_refused(conn, receive)
            return
        session = self._session(principal, sub, "frame", start, t)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive_loop, receive, session, client_ip(scope))
                tg.start_soon(self._catch_up_or_close, sub)
                tg.start_soon(session.enforce_expiry)
                await conn.run()
                tg.cancel_scope.cancel()
            if not conn.closed_by_peer:
                await drain_websocket(receive)
        finally:
            session.end()
            self.runtime.hub.unsubscribe(sub)
            self.runtime.presence.leave_all(sub)
            log.info(
                "conn=%s frame feed %s code=%s",
                conn.id,
                "disconnected" if conn.closed_by_peer else "closed by server",
                conn.close_code,
            )

    def _session(
        self, principal: Principal, sub: FeedSubscriber, kind: str, start: int, t: str | None
    ) -> FeedSession:
        """The live session of an admitted subscriber (registered for revocation)."""
        conn = sub.conn
        log.info(
            "conn=%s peer=%s org=%r actor=%r %s feed since=%s t=%r connected",
            conn.id,
            conn.peer,
            principal.org,
            principal.actor,
            kind,
            start,
            t,
        )
        return FeedSession(principal, sub, self.runtime)

    async def _finish_refused(self, conn: Connection, receive: Any) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain_websocket, receive)
            await conn.run()

    async def _catch_up_or_close(self, sub: FeedSubscriber) -> None:
        try:
            await self._catch_up(sub)
        except ApiError as exc:  # the log was trimmed past it: reset sent, closing
            log.info("conn=%s frame catch-up reset: %s", sub.conn.id, exc.detail)
        except StoreError as exc:
            log.error("conn=%s frame catch-up failed: %s", sub.conn.id, exc)
            sub.conn.close(CloseCode.STORE_UNAVAILABLE, "frame log unavailable")

    async def _receive_loop(self, receive: Any, session: FeedSession, ip: str | None) -> None:
        sub = session.sub
        conn = sub.conn
        timeout = self.runtime.settings.ping_timeout
        limiter = self.runtime.ws_limiter
        while not conn.closing:
            with anyio.move_on_after(timeout) as scope:
                event = await receive()
            if scope.cancelled_caught:
                log.info("conn=%s frame feed silent for %.0f s, closing", conn.id, timeout)
                conn.close(CloseCode.TIMEOUT, f"nothing received for {timeout:g} s")
                return
            if event["type"] == "websocket.disconnect":
                conn.peer_closed(event.get("code", CloseCode.NORMAL))
                return
            if limiter is not None and self._over_rate(limiter, session, ip):
                return
            text = event.get("text")
            if text is None:
                self._refuse(conn, CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
                return
            if len(text) > MAX_CLIENT_MESSAGE:
                self._refuse(conn, CloseCode.MESSAGE_TOO_BIG, "message too large")
                return
            try:
                # UTF-8 is up to 4 bytes a character: the limit above is the one that counts.
                message = parse_json(text, max_bytes=4 * MAX_CLIENT_MESSAGE, what="message")
            except InputError as exc:
                self._refuse(conn, CloseCode.INVALID_PAYLOAD, exc.detail)
                return
            try:
                await self._handle(session, message)
            except AuthError as exc:
                log.warning(
                    "conn=%s peer=%s actor=%r frame feed in-band auth refused, closing %d: %s",
                    conn.id,
                    conn.peer,
                    session.principal.actor,
                    exc.close_code,
                    exc.reason,
                )
                error = {"type": "error", "error": exc.reason, "detail": exc.detail}
                conn.close_after(encode_json_event(error), exc.close_code, exc.reason)
                return
            except ApiError as exc:
                log.warning(
                    "conn=%s peer=%s frame feed closing 4400: %s", conn.id, conn.peer, exc.detail
                )
                message = encode_json_event(error_event(exc))
                conn.close_after(message, CloseCode.BAD_REQUEST, exc.error)
                return
            except LimitExceeded as exc:
                log.warning(
                    "conn=%s peer=%s frame feed closing %d: %s",
                    conn.id,
                    conn.peer,
                    exc.code,
                    exc.detail,
                )
                error = {"type": "error", "error": exc.error, "detail": exc.detail}
                conn.close_after(encode_json_event(error), exc.code, exc.error)
                return

    def _over_rate(self, limiter: Any, session: FeedSession, ip: str | None) -> bool:
        """Count one client message for the principal; past the limit, close 4429."""
        allowed, retry_after = limiter.allow(session.principal.limit_key(ip), time.monotonic())
        if allowed:
            return False
        conn = session.sub.conn
        log.warning(
            "conn=%s peer=%s actor=%r frame feed rate limited, closing 4429",
            conn.id,
            conn.peer,
            session.principal.actor,
        )
        error = {
            "type": "error",
            "error": "rate_limited",
            "detail": "too many messages (--rate-limit-ws-messages): slow down",
            "retry_after": math.ceil(retry_after),
        }
        conn.close_after(encode_json_event(error), CloseCode.RATE_LIMITED, "rate limited")
        return True

    def _refuse(self, conn: Connection, code: int, reason: str) -> None:
        log.warning("conn=%s peer=%s frame feed closing %d: %s", conn.id, conn.peer, code, reason)
        conn.close(code, reason)

    async def _handle(self, session: FeedSession, message: Any) -> None:
        sub = session.sub
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ApiError(400, "invalid_message", 'messages are objects with a "type"')
        kind = message["type"]
        if kind == "ping":
            pong = {"type": "pong", "expires_in": expires_in(session.principal)}
            sub.conn.enqueue(encode_json_event(pong))
            return
        if kind == "auth":
            await self._renew(session, message.get("token"))
            return
        if kind not in ("view", "watch", "leave"):
            raise ApiError(400, "invalid_message", f"unknown message type {kind[:40]!r}")
        t, record_id = message.get("t"), message.get("id")
        if not isinstance(t, str) or not t or "/" in t:
            raise ApiError(400, "invalid_message", f"{kind}: t must be a record type")
        why = record_type_error(t)
        if why is not None:
            raise ApiError(400, "invalid_message", f"{kind}: t: {why}")
        if not isinstance(record_id, str) or not record_id:
            raise ApiError(400, "invalid_message", f"{kind}: id must be a non-empty string")
        try:
            validate_doc_name(f"{t}/{record_id}")
        except InvalidDocName as exc:
            raise ApiError(400, "invalid_message", f"{kind}: {exc}") from None
        presence = self.runtime.presence
        if kind == "leave":
            presence.leave(sub, t, record_id)
            return
        if not session.principal.grant.allows(f"{t}/{record_id}", "read"):
            log.info(
                "conn=%s actor=%r frame feed %s of %r refused: not in the grant",
                sub.conn.id,
                session.principal.actor,
                kind,
                f"{t}/{record_id}",
            )
            error = {
                "type": "error",
                "error": "forbidden",
                "detail": f"{kind}: the grant does not cover this record",
                "t": t,
                "id": record_id,
            }
            sub.conn.enqueue(encode_json_event(error))
            return
        limit = self.runtime.settings.max_views_per_connection
        if (t, record_id) not in sub.watching and len(sub.watching) >= limit:
            raise LimitExceeded(
                CloseCode.VIEW_LIMIT,
                "too_many_views",
                f"one connection may view or watch {limit} records "
                "(--max-views-per-connection); leave one first",
            )
        if kind == "watch":
            sub.conn.enqueue(encode_json_event(presence.watch(sub, t, record_id)))
            return
        state = message.get("state", {})
        if not isinstance(state, dict):
            raise ApiError(400, "invalid_message", "view: state must be an object")
        try:
            principal = session.principal
            await presence.view(
                sub,
                t,
                record_id,
                actor=principal.actor,
                state=state,
                authenticated=principal.authenticated,
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_message", f"view: {exc}") from None
        except RecordNotFound as exc:
            error = {"type": "error", "error": "not_found", "detail": f"view: {exc}"}
            sub.conn.enqueue(encode_json_event({**error, "t": t, "id": record_id}))
            return
        except (RoomLoadError, ShuttingDown, StoreError, TooManyRooms, LimitExceeded) as exc:
            # Not the client's fault: say so, keep the feed open.
            error = {"type": "error", "error": "view_failed", "detail": str(exc)}
            sub.conn.enqueue(encode_json_event({**error, "t": t, "id": record_id}))
            return
        sub.conn.enqueue(encode_json_event(presence.watch(sub, t, record_id)))

    async def _renew(self, session: FeedSession, token: Any) -> None:
        """In-band ``{"type": "auth", "token"}``: the same org and actor, a new grant
        and expiry, the cursor kept.

        Raises:
            AuthError: 401 (the token does not authenticate) or 403 (another org or
                actor, or no ``read``).
        """
        if not isinstance(token, str) or not token:
            raise AuthError(401, "missing", "auth: token must be a non-empty string")
        principal = await self.runtime.auth.authenticate(token, None, "read")
        current = session.principal
        if (principal.org, principal.actor) != (current.org, current.actor):
            raise AuthError(
                403, "forbidden", "auth: a renewed token must be of the same org and actor"
            )
        session.renew(principal)
        sub = session.sub
        gone = self.runtime.presence.leave_uncovered(sub)
        log.info(
            "conn=%s actor=%r frame feed token renewed in band, expires_in=%s%s",
            sub.conn.id,
            principal.actor,
            expires_in(principal),
            f", left {len(gone)} records the new grant does not cover" if gone else "",
        )
        answer = {"type": "auth", "ok": True, "expires_in": expires_in(principal)}
        sub.conn.enqueue(encode_json_event(answer))

    # -- Server-Sent Events -----------------------------------------------------------

    async def sse(self, scope: Scope, receive: Any, send: Any) -> None:
        principal = principal_of(scope)
        query = query_params(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if self.runtime.shutting_down:
                raise ApiError(503, "shutting_down", "the server is shutting down")
            t = parse_type(query.get("t"))
            since = parse_sid(headers.get("last-event-id"), "Last-Event-ID")
            if since is None:
                since = parse_sid(query.get("since"), "since")
            start = await self._start_point(principal.org, since, t)
        except ApiError as exc:
            log.info("peer=%s SSE feed refused %d: %s", peer(scope), exc.status, exc.detail)
            await send_json_response(send, exc.status, json_body(exc.error, exc.detail, exc.extra))
            return
        except StoreError as exc:
            log.error("SSE feed cannot read the store: %s", exc)
            await send_json_response(send, 503, json_body("store_unavailable", str(exc)))
            return
        conn = self._connection(SseTransport(send), scope, "sync/v1/events", principal)
        sub = FeedSubscriber(
            conn,
            principal.org,
            t=t,
            since=start,
            encode=encode_sse,
            encode_event=encode_sse_event,
            docs=principal.grant,
        )
        sub.all_presence = query.get("presence") == "all"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        # Tell EventSource how soon to reconnect, before any frame.
        conn.enqueue(b"retry: 2000\n\n")
        session = self._session(principal, sub, "SSE", start, t)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_disconnect, receive, conn)
                tg.start_soon(_keep_alive, session)
                tg.start_soon(self._catch_up_or_close, sub)
                tg.start_soon(session.enforce_expiry)
                await conn.run()
                tg.cancel_scope.cancel()
        finally:
            session.end()
            self.runtime.hub.unsubscribe(sub)
            log.info("conn=%s SSE feed ended code=%s", conn.id, conn.close_code)


async def _watch_disconnect(receive: Any, conn: Connection) -> None:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            conn.peer_closed(CloseCode.NORMAL)
            return


async def _keep_alive(session: FeedSession) -> None:
    conn = session.sub.conn
    while not conn.closing:
        await anyio.sleep(SSE_KEEPALIVE_SECONDS)
        left = expires_in(session.principal)
        suffix = "" if left is None else f" expires_in={left}"
        conn.enqueue(f": keep-alive{suffix}\n\n".encode())


def accept_message(scope: Scope) -> dict[str, Any]:
    """``websocket.accept``, echoing the subprotocol the front door chose (a browser
    that offered ``crdt-sync`` and ``bearer.<token>`` fails a handshake without it)."""
    message: dict[str, Any] = {"type": "websocket.accept"}
    subprotocol = scope.get(SUBPROTOCOL_KEY)
    if subprotocol is not None:
        message["subprotocol"] = subprotocol
    return message
