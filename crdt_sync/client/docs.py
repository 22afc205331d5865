"""``DocClient``: a pycrdt ``Doc`` kept in sync with one crdt-sync room, across disconnects.

::

    async with DocClient("http://127.0.0.1:1234", "note/x", token=token) as client:
        await client.synced()
        body = client.doc.get("body", type=Text)
        body += "hello"
        client.set_presence({"user": {"name": "py"}})
        await client.flush()  # the server has applied everything so far

``url`` is the server's base (``http(s)://`` or ``ws(s)://``, with the path prefix
of a proxy if any); a URL that already ends in ``/yjs`` is taken as the Yjs base.

Each connection is one :class:`~crdt_sync.client.yjs.YjsClient` session on the same
``Doc`` and ``Awareness``. A new session resyncs as y-websocket does: this client
sends its state vector (step 1) and applies the server's answer (step 2), and
answers the server's step 1 with everything the server lacks, which carries every
edit made while offline (an edit sent twice is integrated once: Yjs updates are
idempotent). Between sessions it waits :class:`~.backoff.Backoff` delays (capped
exponential, full jitter), and reads the close code:

========================  ========================================================
4401 (or HTTP 401)        ask ``token_provider`` for a new token and reconnect;
                          without one, stop with :class:`Unauthorized`
4403 / 4404 (HTTP 403)    stop with :class:`Forbidden` / :class:`DocNotFound`
4429 (or HTTP 429)        wait (at least the ``retry in N s`` of the reason, or
                          ``Retry-After``), then reconnect
4400 1002 1003 1007 1009  stop with :class:`Refused`: the same content would be
4413 4460                 refused again
anything else             (1001 shutdown, 1011, 1012 restart, 1013 try again,
                          4408, 4500, 4503, a lost connection) reconnect
========================  ========================================================

The heartbeat is the WebSocket ping of the ``websockets`` library: a ping every
``ping_interval`` seconds, and a connection whose pong has not come within
``ping_timeout`` is dropped (close sent: 1011 ``keepalive ping timeout``) and
reconnected, so a silently dead server is noticed within ``ping_interval +
ping_timeout`` seconds (15 + 15 by default) and the client is ``offline``
``close_timeout`` (2 s) later, when it stops waiting for the server's goodbye.

Presence: :meth:`DocClient.set_presence` sets the local awareness state; it is sent
again on every new connection, renewed every 15 s (as y-protocols clients do, so
no peer times it out) and removed when the client closes. Remote states are
cleared when a connection ends (the next one is greeted with the current ones).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import websockets
from pycrdt import Awareness, Doc
from websockets.exceptions import InvalidHandshake, InvalidStatus

from rooms.close_codes import CloseCode

from .backoff import Backoff
from .urls import yjs_base
from .yjs import YjsClient, connect

log = logging.getLogger(__name__)

State = Literal["offline", "syncing", "online"]
TokenProvider = Callable[[], Awaitable[str]]

#: Close codes after which reconnecting would only be refused again.
FATAL_CODES = frozenset(
    {
        CloseCode.BAD_REQUEST,
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_PAYLOAD,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.PENDING_TOO_LARGE,
        CloseCode.AWARENESS_LIMIT,
    }
)

#: The floor of the wait after a 4429 whose reason gives no ``retry in N s``.
RATE_LIMIT_FLOOR = 1.0

#: Longest closing spends sending the presence removal and what is still queued.
CLOSE_FLUSH_TIMEOUT = 5.0

_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?) ?s")


class DocClientError(Exception):
    """Why a :class:`DocClient` stopped.

    Attributes:
        code: The close code (or ``4000 + HTTP status`` of a refused handshake).
        reason: The server's reason, as sent.
    """

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class Unauthorized(DocClientError):
    """4401: no valid token, and no ``token_provider`` (or it failed)."""


class Forbidden(DocClientError):
    """4403: the token's grant does not cover this doc."""


class DocNotFound(DocClientError):
    """4404: the doc was deleted while connected."""


class Refused(DocClientError):
    """The server refused what this client sends (a bad name, a message too big...)."""


class DocClient:
    """A ``Doc`` synced with the room ``doc`` of the server at ``url``, reconnecting.

    Use it as an async context manager; it connects in the background (``async with``
    does not wait for the server: use :meth:`synced`).

    Args:
        url: The server base (``http://127.0.0.1:1234``) or its ``/yjs`` base.
        doc: The document name (``note/x``).
        token: Sent as ``Authorization: Bearer``.
        token_provider: Called for a new token after a 4401 (token expired, revoked).
        ydoc: The ``Doc`` to sync (a new one by default): :attr:`doc`.
        backoff: Reconnect delays (default: 0.5 s base, 30 s cap, full jitter).
        ping_interval: Seconds between heartbeat pings.
        ping_timeout: Seconds without a pong after which the connection is dead.
        open_timeout: Seconds a connection attempt (TCP + handshake) may take.
        close_timeout: Seconds a closing connection waits for the server's goodbye
            (after a heartbeat failure too: the state is ``offline`` that much later).
    """

    def __init__(
        self,
        url: str,
        doc: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        ydoc: Doc | None = None,
        backoff: Backoff | None = None,
        ping_interval: float = 15.0,
        ping_timeout: float = 15.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        self.url = yjs_base(url)
        self.name = doc
        self.doc = ydoc if ydoc is not None else Doc()
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)
        self.backoff = backoff if backoff is not None else Backoff()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        #: Why the client stopped (``None`` while it runs or after a plain close).
        self.error: DocClientError | None = None
        #: The last connection failure or close, in words (``"cannot connect: ..."``).
        self.last_problem: str | None = None
        #: The last close the server sent: ``(code, reason)``.
        self.last_close: tuple[int | None, str] | None = None
        #: Sessions ended by the heartbeat (no pong within ``ping_timeout``).
        self.heartbeat_timeouts = 0
        #: Connections made (the first included), and attempts (failed ones included).
        self.connections = 0
        self.attempts = 0
        self._token = token
        self._token_provider = token_provider
        self._state: State = "offline"
        self._state_changed = anyio.Event()
        self._session: YjsClient | None = None
        self._wake = anyio.Event()  # set_token / close: stop waiting, look again
        self._closing = False
        self._stopped = anyio.Event()
        self._tg: Any = None
        self._attempt: anyio.CancelScope | None = None

    # -- public ----------------------------------------------------------------

    @property
    def state(self) -> State:
        """``offline`` (no connection), ``syncing`` (connected, not yet synced),
        ``online`` (synced; edits flow both ways)."""
        return self._state

    @property
    def stopped(self) -> bool:
        """Whether the client gave up (see :attr:`error`) or was closed."""
        return self._stopped.is_set()

    @property
    def presence(self) -> dict[int, dict[str, Any]]:
        """Awareness states of the other clients in the room, by client id."""
        own = self.awareness.client_id
        return {cid: s for cid, s in self.awareness.states.items() if cid != own and s is not None}

    def set_presence(self, state: dict[str, Any] | None) -> None:
        """Set (``None``: remove) this client's awareness state; sent now if connected,
        and on every reconnect."""
        self.awareness.set_local_state(state)

    def set_token(self, token: str) -> None:
        """Use ``token`` from now on: an open connection is closed and remade with it,
        a pending reconnect is made at once (a stopped client stays stopped)."""
        self._token = token
        self._poke()

    async def wait_for_state(self, state: State) -> None:
        """Wait until :attr:`state` is ``state`` (bound it with a timeout).

        Raises:
            DocClientError: the client stopped first (its :attr:`error`).
        """
        while self._state != state:
            self._raise_if_stopped()
            changed = self._state_changed
            await changed.wait()

    async def synced(self) -> None:
        """Wait until the current connection has synced (``online``).

        Raises:
            DocClientError: the client stopped first.
        """
        await self.wait_for_state("online")

    async def flush(self) -> None:
        """Wait until the server has applied every local change made so far.

        Waits to be online, then makes a sync round trip (step 1, answered in order
        after everything sent before); a connection lost meanwhile is waited out
        and the round trip made on the next one (which resyncs everything).

        Raises:
            DocClientError: the client stopped first.
        """
        while True:
            await self.synced()
            session = self._session
            if session is not None and await session.roundtrip():
                return

    async def aclose(self) -> None:
        """Remove the presence, send what is queued, close; idempotent."""
        if self._tg is None:
            return
        self._closing = True
        self._poke()
        if self._attempt is not None:
            self._attempt.cancel()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    async def __aenter__(self) -> DocClient:
        if self._tg is not None:
            raise RuntimeError("expected a new DocClient, got one already entered")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run)
        self._tg.start_soon(self.awareness.start)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.aclose()
        finally:
            self._tg.cancel_scope.cancel()
            # Not handed the caller's exception: anyio would wrap it in an
            # ExceptionGroup; it propagates as it is once the tasks have ended.
            await self._tg.__aexit__(None, None, None)

    # -- the connection loop ---------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        log.debug("doc=%r state %s -> %s", self.name, self._state, state)
        self._state = state
        self._state_changed.set()
        self._state_changed = anyio.Event()

    def _raise_if_stopped(self) -> None:
        if self._stopped.is_set():
            if self.error is not None:
                raise self.error
            raise DocClientError(f"DocClient for {self.name!r} is closed")

    def _poke(self) -> None:
        self._wake.set()

    def _stop(self, error: DocClientError | None) -> None:
        if self._stopped.is_set():
            return
        if error is not None:
            self.error = error
            log.warning("doc=%r client stopped: %s", self.name, error)
        self._set_state("offline")
        self._stopped.set()
        self._state_changed.set()  # waiters re-check and raise
        self._state_changed = anyio.Event()

    async def _run(self) -> None:
        error: DocClientError | None = None
        try:
            error = await self._loop()
        except Exception as exc:  # a bug here must not leave waiters hanging forever
            log.exception("doc=%r client loop failed", self.name)
            error = DocClientError(f"DocClient failed: {exc!r}")
        finally:  # cancelled too (the caller's scope around ``async with``)
            self._stop(error)

    async def _loop(self) -> DocClientError | None:
        """Connect, reconnect; returns the error to stop with (``None``: closed)."""
        while not self._closing:
            self._wake = anyio.Event()
            floor, error = await self._session_once()
            if self._closing:
                return None
            if isinstance(error, Unauthorized) and self._token_provider is not None:
                try:
                    self._token = await self._token_provider()
                except Exception as exc:
                    return Unauthorized(f"token_provider failed: {exc!r}", error.code)
            elif error is not None:
                return error
            if self._wake.is_set():  # set_token: reconnect at once
                continue
            delay = self.backoff.next_delay(at_least=floor)
            log.info("doc=%r reconnecting in %.2f s (%s)", self.name, delay, self.last_problem)
            with anyio.move_on_after(delay):
                await self._wake.wait()
        return None

    async def _session_once(self) -> tuple[float, DocClientError | None]:
        """One connection, from the attempt to its end.

        Returns:
            The least wait before the next attempt, and the error to stop with (an
            :class:`Unauthorized` is handed to the token provider first).
        """
        session: YjsClient | None = None
        left = False
        self.attempts += 1
        try:
            with anyio.CancelScope() as attempt:  # closing cancels a pending handshake
                self._attempt = attempt
                async with connect(
                    self.url,
                    self.name,
                    self.doc,
                    token=self._token,
                    awareness=self.awareness,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    open_timeout=self.open_timeout,
                    close_timeout=self.close_timeout,
                ) as session:
                    self._attempt = None
                    left = await self._connected(session)
        except InvalidStatus as exc:
            return self._refused_handshake(exc)
        except (OSError, TimeoutError, InvalidHandshake, websockets.ConnectionClosed) as exc:
            self.last_problem = f"cannot connect: {exc!r}"
            log.info("doc=%r %s", self.name, self.last_problem)
            return 0.0, None
        finally:
            self._attempt = None
            self._session = None
            self._set_state("offline")
            self.backoff.disconnected()
            self._forget_remote_presence()
        if session is None or left:
            return 0.0, None  # not connected (closing during the handshake), or we left
        return self._closed(session)

    async def _connected(self, session: YjsClient) -> bool:
        """Serve one connection until it ends; ``True`` if we left it (token, close)."""
        self.connections += 1
        self._session = session
        self.backoff.connected()
        self._set_state("syncing")
        local = self.awareness.get_local_state()
        if local is not None:
            self.awareness.set_local_state(local)  # a new clock: sent on this connection
        async with anyio.create_task_group() as tg:

            async def online() -> None:
                await session._synced.wait()
                if not session.closed.is_set():
                    self._set_state("online")
                    log.info("doc=%r online (connection %d)", self.name, self.connections)

            async def ended() -> None:
                await session.closed.wait()
                tg.cancel_scope.cancel()

            async def poked() -> None:
                nonlocal left
                await self._wake.wait()
                left = True
                tg.cancel_scope.cancel()

            left = False
            tg.start_soon(online)
            tg.start_soon(ended)
            tg.start_soon(poked)
        if self._closing and not session.closed.is_set():
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                if self.awareness.get_local_state() is not None:
                    self.awareness.set_local_state(None)
                await session.flush()
        return left

    def _closed(self, session: YjsClient) -> tuple[float, DocClientError | None]:
        code, reason = session.close_code, session.close_reason or ""
        if session.close_sent is not None and session.close_sent[1] == "keepalive ping timeout":
            self.heartbeat_timeouts += 1
            self.last_problem = f"no pong within {self.ping_timeout:g} s (heartbeat)"
            log.warning("doc=%r %s: connection dropped", self.name, self.last_problem)
            return 0.0, None
        self.last_close = (code, reason)
        self.last_problem = f"closed by the server: {code} {reason}".rstrip()
        log.info("doc=%r %s", self.name, self.last_problem)
        return self._judge(code, reason)

    def _judge(self, code: int | None, reason: str) -> tuple[float, DocClientError | None]:
        where = f"{self.name!r} at {self.url}"
        detail = f" ({reason})" if reason else ""
        if code == CloseCode.UNAUTHORIZED:
            return 0.0, Unauthorized(f"not authorized for {where}{detail}", code, reason)
        if code == CloseCode.FORBIDDEN:
            return 0.0, Forbidden(f"the token does not cover {where}{detail}", code, reason)
        if code == CloseCode.NOT_FOUND:
            return 0.0, DocNotFound(f"{where} was deleted{detail}", code, reason)
        if code in FATAL_CODES:
            return 0.0, Refused(f"the server refused {where}: {code}{detail}", code, reason)
        if code == CloseCode.RATE_LIMITED:
            match = _RETRY_IN.search(reason)
            return (float(match[1]) if match else RATE_LIMIT_FLOOR), None
        return 0.0, None

    def _refused_handshake(self, exc: InvalidStatus) -> tuple[float, DocClientError | None]:
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
        self.last_problem = f"handshake refused: HTTP {status} {body}".rstrip()
        log.info("doc=%r %s", self.name, self.last_problem)
        if status in (401, 403, 404, 400):
            return self._judge(4000 + status if status != 400 else CloseCode.BAD_REQUEST, body)
        if status in (429, 503):
            retry_after = exc.response.headers.get("Retry-After", "")
            try:
                return float(retry_after), None
            except ValueError:
                return RATE_LIMIT_FLOOR, None
        return 0.0, None

    def _forget_remote_presence(self) -> None:
        own = self.awareness.client_id
        others = [cid for cid in self.awareness.states if cid != own]
        if others:
            self.awareness.remove_awareness_states(others, "disconnected")
        # Their clocks too: a y-websocket peer re-sends its state on reconnect with the
        # clock it had, which would otherwise be ignored as not newer until its next
        # renewal (up to 15 s later).
        for cid in [cid for cid in self.awareness.meta if cid != own]:
            del self.awareness.meta[cid]
