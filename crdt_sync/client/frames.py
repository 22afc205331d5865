"""A Python client of the SyncFrame feed: a local pool of records kept current.

::

    async with FrameClient("http://127.0.0.1:1234", token=token, types=["task"]) as client:
        await client.wait_state("online")
        client.subscribe(lambda frames: print(frames))
        client.save("task", "t1", {"title": "write the docs"})
        print(client.get("task", "t1"))

What it does, so that no app writes this loop again:

* **Pool.** It loads ``GET /sync/v1/records`` once, then follows ``WS /sync/v1/ws``
  from its cursor (``?since=``, which the server documents as gap-free and without
  duplicates across the switch to live frames). After every (re)connect it also reads
  ``GET /sync/v1/delta?since=`` up to the newest frame: that tells it when it has
  caught up (``syncing`` → ``online``), and moves the cursor past frames its filter or
  grant hides. Frames come from both; each is applied and delivered once, in sid order.
  A ``since_too_old`` reset (close 4410 or HTTP 410) reloads the pool from
  ``/sync/v1/records`` and its ``sid``.
* **Writes.** :meth:`FrameClient.save` / :meth:`~FrameClient.insert` /
  :meth:`~FrameClient.delete` change the pool at once (optimistically) and queue a
  mutation with a new ``client_tx_id``; the queue (memory, or a SQLite file with
  ``queue_path=``) is sent in order with ``POST /sync/v1/mutations`` whenever the client
  is online, and an entry leaves it only once the server answered it, so a replay
  after a lost answer or a restart is applied once (the server keys on
  ``client_tx_id``). A mutation carries ``base_sid`` (the cursor when it was made): the
  fields it overwrote that another writer set since then come back as ``overwritten``
  and are passed to :meth:`~FrameClient.on_conflict` callbacks.
* **Link.** Reconnects with :class:`~crdt_sync.client.backoff.Backoff` (full jitter,
  reset after a stable connection), honouring ``Retry-After``/``retry_after`` and the
  close codes: 4401 asks ``token_provider`` for a new token (none: stays offline with
  :attr:`~FrameClient.error` until :meth:`~FrameClient.set_token`), 4403 and 4400 stop
  (until :meth:`~FrameClient.set_token`), 4429 waits, 4410 reloads. It sends
  ``{"type": "ping"}`` every ``ping_interval`` seconds; ``pong_timeout`` seconds without
  any message from the server is a dead connection: it is dropped and reopened.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import anyio
import httpx
import websockets
from websockets.exceptions import InvalidHandshake, InvalidStatus

from .backoff import Backoff
from .offline_queue import OfflineQueue, QueuedMutation, open_queue
from .record_pool import RecordPool
from .urls import http_base

log = logging.getLogger(__name__)

State = Literal["offline", "syncing", "online"]
STATES: tuple[State, ...] = ("offline", "syncing", "online")

#: Frames per ``/sync/v1/delta`` page and records per ``/sync/v1/records`` page.
PAGE = 1000
#: Upper bound of pages read in one catch-up or bootstrap (every loop is bounded).
MAX_PAGES = 100_000
#: Times one HTTP read is retried after a 429 before the link is given up.
THROTTLE_RETRIES = 10

Frame = dict[str, Any]
TokenProvider = Callable[[], Awaitable[str | None]]
_F = TypeVar("_F", bound=Callable[..., Any])


class FrameClientError(Exception):
    """A request of the client failed (see the message)."""


@dataclass(frozen=True, slots=True)
class ConnectAttempt:
    """One connection attempt, as passed to :meth:`FrameClient.on_attempt` callbacks.

    Attributes:
        number: Backoff delays drawn since the last stable connection (0: the first
            attempt, 1: the first retry after a connection ended, ...).
        delay: Seconds waited before it (the backoff's draw, or a server's floor).
        at: ``time.monotonic()`` when it started.
        after: Why the previous connection ended (``"start"`` for the first one).
    """

    number: int
    delay: float
    at: float
    after: str


@dataclass(slots=True)
class _Outcome:
    """How one connection ended."""

    why: str
    code: int | None = None
    retry_after: float = 0.0
    reset: bool = False
    requested: bool = False  # set_token() or close(): no backoff


class _LinkEnded(Exception):
    def __init__(self, outcome: _Outcome) -> None:
        super().__init__(outcome.why)
        self.outcome = outcome


class _Link:
    """One open WebSocket and what it said before it ended."""

    def __init__(self, ws: Any, generation: int) -> None:
        self.ws = ws
        self.generation = generation
        self.last_seen = time.monotonic()
        self.error: dict[str, Any] | None = None
        self.outcome: _Outcome | None = None
        self.dead = False


class _Callbacks:
    """Registered callbacks; one failing is logged, never breaks the client."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: list[Callable[..., Any]] = []

    def add(self, cb: Callable[..., Any]) -> Callable[[], None]:
        self._items.append(cb)

        def remove() -> None:
            if cb in self._items:
                self._items.remove(cb)

        return remove

    def call(self, *args: Any) -> None:
        for cb in list(self._items):
            try:
                result = cb(*args)
                if inspect.isawaitable(result):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()  # never awaited: a coroutine would warn
                    log.error(
                        "%s callback %r is async: callbacks must be plain functions", self.what, cb
                    )
            except Exception:
                log.exception("%s callback %r failed", self.what, cb)


def _retry_after(headers: httpx.Headers | Any) -> float:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else 0.0
    except ValueError:
        return 0.0


def _throttle_wait(response: httpx.Response) -> float:
    """How long a 429 asks to wait: ``retry_after_ms`` of the body (precise), else
    ``Retry-After`` (whole seconds), else one second."""
    try:
        ms = response.json().get("retry_after_ms")
    except (ValueError, AttributeError):
        ms = None
    if isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0:
        return ms / 1000
    return _retry_after(response.headers) or 1.0


def _check_record(t: Any, record_id: Any) -> None:
    if not isinstance(t, str) or not t or "/" in t:
        raise ValueError(f"t must be a non-empty record type without '/', got {t!r}")
    if not isinstance(record_id, str) or not record_id:
        raise ValueError(f"id must be a non-empty string, got {record_id!r}")


def _valid_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("t"), str)
        and isinstance(record.get("id"), str)
        and isinstance(record.get("fields"), dict)
        and isinstance(record.get("sid", 0), int | None)
    )


def _valid_frame(frame: Any) -> bool:
    return (
        isinstance(frame, dict)
        and isinstance(frame.get("sid"), int)
        and isinstance(frame.get("t"), str)
        and isinstance(frame.get("id"), str)
        and frame.get("op") in ("i", "u", "d")
        and isinstance(frame.get("p", {}), dict | None)
    )


class FrameClient:
    """A local pool of current records kept up to date from the frame feed.

    Use it as an async context manager (``async with FrameClient(...) as client``);
    leaving the context closes it. See the module docstring for what it does.

    Args:
        url: The server, ``http://host:port`` (a path prefix is kept; ``ws://`` works too).
        token: Sent as ``Authorization: Bearer`` on the WebSocket and every request.
        types: Record types to keep (``None``: all the token may read).
        queue_path: A SQLite file for the offline queue (``None``: memory only).
        token_provider: Called (awaited) on 4401 / HTTP 401 for a fresh token;
            ``None`` from it, or no provider, leaves the client offline with
            :attr:`error` until :meth:`set_token`.
        backoff: Reconnect delays (default: ``Backoff()``, 0.5 s doubling to 30 s).
        ping_interval: Seconds between pings.
        pong_timeout: Seconds without any message from the server after which the
            connection counts as dead.
        connect_timeout: Seconds a WebSocket handshake may take.
        http_timeout: Seconds an HTTP request may take.
        batch_size: Mutations per ``POST /sync/v1/mutations``.
        client_id: Tells this client's writes from other writers of the same actor
            (default: kept in the queue file, else new).
        name: For log lines (default: the start of the ``client_id``).
        since: Start the feed after this sid instead of loading the pool (the pool
            then holds what the frames after it show).
        load_records: ``False``: start at the newest frame without loading the
            records (a client that only follows frames, like ``crdt-sync tail``).
        reload_on_reset: ``False``: a ``since_too_old`` reset stops the client with
            :attr:`error` instead of reloading the pool (frames would be missed).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        types: Iterable[str] | str | None = None,
        queue_path: str | Path | None = None,
        token_provider: TokenProvider | None = None,
        backoff: Backoff | None = None,
        ping_interval: float = 15.0,
        pong_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        http_timeout: float = 10.0,
        batch_size: int = 100,
        client_id: str | None = None,
        name: str | None = None,
        since: int | None = None,
        load_records: bool = True,
        reload_on_reset: bool = True,
    ) -> None:
        self.url = http_base(url)
        self._ws_base = "ws" + self.url[len("http") :] + "/sync/v1/ws"
        self._token = token
        if isinstance(types, str):
            types = [types]
        self.types: tuple[str, ...] | None = tuple(types) if types is not None else None
        for t in self.types or ():
            _check_record(t, "-")
        self.queue_path = queue_path
        self.token_provider = token_provider
        self.backoff = backoff if backoff is not None else Backoff()
        self._send_backoff = Backoff(base=self.backoff.base, cap=self.backoff.cap)
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.connect_timeout = connect_timeout
        self.http_timeout = http_timeout
        self.batch_size = batch_size
        self._client_id = client_id
        self.name = name
        #: Why the client stopped trying (4401 without a new token, 4403, 4400), or ``None``.
        self.error: str | None = None
        #: The code the last WebSocket closed with.
        self.close_code: int | None = None

        self._pool = RecordPool(self.types)
        if since is not None:
            if isinstance(since, bool) or not isinstance(since, int) or since < 0:
                raise ValueError(f"since must be a sid (an integer >= 0), got {since!r}")
            self._pool.load([], since)
        self.load_records = load_records
        self.reload_on_reset = reload_on_reset
        self._queue: OfflineQueue | None = None
        self._http: httpx.AsyncClient | None = None
        self._state: State = "offline"
        # Made in __aenter__ (anyio primitives need the event loop): see _primitives().
        self._changed: anyio.Event = None  # type: ignore[assignment]  # replaced on every change
        self._wake: anyio.Event = None  # type: ignore[assignment]  # set_token(): go on now
        self._halted = False
        self._send_halted = False
        self._generation = 0  # bumped by set_token(): older links' frames are dropped
        self._delivered = -1  # the newest sid handed to subscribers
        self._link_scope: anyio.CancelScope | None = None
        self._tg: Any = None
        self._closed = False
        self._token_lock: anyio.Lock = None  # type: ignore[assignment]

        self._subscribers = _Callbacks("subscribe")
        self._conflicts = _Callbacks("on_conflict")
        self._states = _Callbacks("on_state")
        self._errors = _Callbacks("on_error")
        self._attempts = _Callbacks("on_attempt")
        self._resets = _Callbacks("on_reset")

    # -- life ----------------------------------------------------------------------

    async def __aenter__(self) -> FrameClient:
        if self._tg is not None or self._closed:
            raise FrameClientError("a FrameClient is entered once")
        self._changed, self._wake, self._token_lock = anyio.Event(), anyio.Event(), anyio.Lock()
        self._queue = open_queue(self.queue_path)
        if self._client_id is None:
            self._client_id = self._queue.get_meta("client_id") or uuid.uuid4().hex
        self._queue.set_meta("client_id", self._client_id)
        if self.name is None:
            self.name = self._client_id[:8]
        for mutation in self._queue.items():
            self._pool.add(mutation)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.http_timeout)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._supervised, self._run)
        self._tg.start_soon(self._supervised, self._send_loop)
        return self

    async def _supervised(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the client's loops; a bug in it is logged and the loop restarted
        (after a pause), never left dead while the client looks alive."""
        while not self._closed:
            try:
                await loop()
                return
            except Exception:
                log.exception("frame client %s: %s failed, restarting it", self.name, loop)
                self._set_state("offline", "internal error")
                await anyio.sleep(1.0)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                await tg.__aexit__(None, None, None)
        finally:
            if self._http is not None:
                with anyio.CancelScope(shield=True):
                    await self._http.aclose()
            if self._queue is not None:
                self._queue.close()

    async def close(self) -> None:
        """Stop: close the connection and give up sending (queued mutations stay in the
        queue file). Also done on leaving the ``async with``."""
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        self._set_state("offline", "closed")

    # -- what the app reads ---------------------------------------------------------

    @property
    def state(self) -> State:
        """``"offline"``, ``"syncing"`` (connected, catching up) or ``"online"``."""
        return self._state

    @property
    def client_id(self) -> str | None:
        return self._client_id

    @property
    def cursor(self) -> int | None:
        """The newest sid seen (``None`` before the pool was loaded)."""
        return self._pool.cursor

    @property
    def pending(self) -> list[QueuedMutation]:
        """Mutations not yet answered by the server, oldest first."""
        return self._queue.items() if self._queue is not None else []

    def get(self, t: str, record_id: str) -> dict[str, Any] | None:
        """A record's fields (with local changes not yet confirmed), ``None`` if absent."""
        return self._pool.get(t, record_id)

    def records(self, t: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """Every record in the pool, by ``(t, id)`` (with local changes)."""
        return self._pool.records(t)

    async def wait_state(self, *states: State) -> State:
        """Wait until the state is one of ``states`` (bound it with a timeout)."""
        for state in states:
            if state not in STATES:
                raise ValueError(f"no state {state!r}: one of {', '.join(STATES)}")
        while self._state not in states:
            await self._changed.wait()
        return self._state

    async def stopped(self) -> str:
        """Wait until the client stopped trying to connect (4401 without a new token,
        4403, 4400, or a reset with ``reload_on_reset=False``); returns :attr:`error`."""
        while not self._halted:
            await self._changed.wait()
        return self.error or "stopped"

    async def drained(self) -> None:
        """Wait until every queued mutation was answered (bound it with a timeout)."""
        while self._queue is not None and len(self._queue):
            await self._changed.wait()

    # -- callbacks ------------------------------------------------------------------

    def subscribe(self, cb: Callable[[list[Frame]], Any]) -> Callable[[], None]:
        """Call ``cb(frames)`` with every batch of new frames, in sid order, each frame
        once (after the pool was updated). Returns the unsubscribe function.

        Callbacks (here and below) are plain functions run on the client's task: keep
        them short; an exception in one is logged.
        """
        return self._subscribers.add(cb)

    def on_conflict(self, cb: Callable[[str, str, dict[str, Any]], Any]) -> Callable[[], None]:
        """Call ``cb(t, id, fields)`` when a mutation of this client overwrote fields that
        another writer had set since the mutation's ``base_sid``: ``fields`` maps each
        to ``{"value", "who", "sid"}``, the value replaced and who wrote it when."""
        return self._conflicts.add(cb)

    def on_state(self, cb: Callable[[State], Any]) -> Callable[[], None]:
        """Call ``cb(state)`` on every state change."""
        return self._states.add(cb)

    def on_error(self, cb: Callable[[QueuedMutation, dict[str, Any]], Any]) -> Callable[[], None]:
        """Call ``cb(mutation, result)`` when the server refused a mutation (it is
        dropped from the queue and from the pool's local changes)."""
        return self._errors.add(cb)

    def on_attempt(self, cb: Callable[[ConnectAttempt], Any]) -> Callable[[], None]:
        """Call ``cb(attempt)`` as each connection attempt starts."""
        return self._attempts.add(cb)

    def on_reset(self, cb: Callable[[str], Any]) -> Callable[[], None]:
        """Call ``cb(why)`` when the pool was reloaded from ``/sync/v1/records``
        (``since_too_old``, :meth:`set_token`): frames in between were not delivered."""
        return self._resets.add(cb)

    # -- writes ---------------------------------------------------------------------

    def save(self, t: str, record_id: str, fields: dict[str, Any]) -> str:
        """Set ``fields`` of a record (``None`` removes one): an update if the pool holds
        the record, else an insert. Returns the mutation's ``client_tx_id``."""
        op = "u" if self._pool.get(t, record_id) is not None else "i"
        return self._enqueue(t, record_id, op, fields)

    def insert(self, t: str, record_id: str, fields: dict[str, Any]) -> str:
        """Create a record (the server refuses it if the record exists)."""
        return self._enqueue(t, record_id, "i", fields)

    def delete(self, t: str, record_id: str) -> str:
        """Delete a record."""
        return self._enqueue(t, record_id, "d", {})

    def _enqueue(self, t: str, record_id: str, op: str, fields: dict[str, Any]) -> str:
        if self._queue is None or self._closed:
            raise FrameClientError("the client is not open (use it in `async with`)")
        _check_record(t, record_id)
        if not isinstance(fields, dict) or not all(isinstance(k, str) and k for k in fields):
            raise ValueError("fields must be a dict with non-empty string keys")
        mutation = QueuedMutation(
            client_tx_id=f"{self._client_id}-{uuid.uuid4().hex}",
            t=t,
            id=record_id,
            op=op,
            p=dict(fields),
            base_sid=self._pool.cursor,
        )
        self._queue.append(mutation)
        self._pool.add(mutation)
        self._poke()
        return mutation.client_tx_id

    # -- link control -----------------------------------------------------------------

    def set_token(self, token: str | None) -> None:
        """Use ``token`` from now on: reconnect, clear the pool and reload it (the
        offline queue is kept and sent with the new token). Also restarts a client
        that stopped on 4401/4403."""
        self._token = token
        self._generation += 1
        self._pool.clear()
        self._delivered = -1
        self._halted = self._send_halted = False
        self.error = None
        log.info("frame client %s: token changed, reconnecting", self.name)
        self._resets.call("token changed")
        self._set_state("offline", "token changed")
        if self._link_scope is not None:
            self._link_scope.cancel()
        self._wake_up()
        self._poke()

    async def catch_up(self) -> None:
        """Read what the feed has not delivered yet from ``GET /sync/v1/delta``, up to
        the newest frame, now (the client also does it after every reconnect).

        Raises:
            FrameClientError: the server could not be read (on ``since_too_old`` the
                client also reconnects and reloads the pool, as on a 4410).
        """
        if self._pool.cursor is None:
            raise FrameClientError("the pool is not loaded yet: wait for state 'online'")
        try:
            await self._http_catch_up(self._generation)
        except _LinkEnded as exc:
            if exc.outcome.reset and self.reload_on_reset:
                self._generation += 1  # frames of the current link no longer apply
                self._pool.clear()
                self._resets.call(exc.outcome.why)
                if self._link_scope is not None:
                    self._link_scope.cancel()
                self._wake_up()
            raise FrameClientError(f"catch-up failed: {exc.outcome.why}") from None

    # -- internals: state --------------------------------------------------------------

    def _set_state(self, state: State, why: str) -> None:
        if state == self._state:
            return
        old, self._state = self._state, state
        log.info("frame client %s: %s -> %s (%s)", self.name, old, state, why)
        self._states.call(state)
        self._poke()

    def _poke(self) -> None:
        if self._changed is not None:  # None before __aenter__
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    def _wake_up(self) -> None:
        if self._wake is not None:
            wake, self._wake = self._wake, anyio.Event()
            wake.set()

    def _halt(self, why: str) -> None:
        self.error = why
        self._halted = True
        log.warning("frame client %s: stopped: %s", self.name, why)
        self._poke()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    # -- internals: frames -------------------------------------------------------------

    def _deliver(self, frames: list[Any], generation: int) -> None:
        """Apply frames to the pool, then hand the new ones to subscribers."""
        if generation != self._generation:
            return  # a link of the previous token
        valid = [f for f in frames if _valid_frame(f)]
        if len(valid) != len(frames):
            log.warning(
                "frame client %s: %d malformed frames ignored", self.name, len(frames) - len(valid)
            )
        valid.sort(key=lambda f: f["sid"])
        fresh = [f for f in self._pool.apply(valid) if f["sid"] > self._delivered]
        if fresh:
            self._delivered = fresh[-1]["sid"]
            self._subscribers.call(fresh)

    # -- internals: HTTP reads -----------------------------------------------------------

    async def _get_json(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """GET ``path``; a refusal becomes the link outcome it stands for."""
        assert self._http is not None
        for _ in range(THROTTLE_RETRIES):
            try:
                response = await self._http.get(path, params=params, headers=self._headers())
            except httpx.HTTPError as exc:
                raise _LinkEnded(_Outcome(f"GET {path} failed: {exc!r}")) from None
            status = response.status_code
            if status == 200:
                try:
                    body = response.json()
                except ValueError:
                    raise _LinkEnded(_Outcome(f"GET {path}: not JSON")) from None
                if isinstance(body, dict):
                    return body
                raise _LinkEnded(_Outcome(f"GET {path}: not a JSON object"))
            detail = response.text[:200]
            if status == 429:
                wait = _throttle_wait(response)
                log.info("frame client %s: GET %s throttled (%.2f s)", self.name, path, wait)
                await anyio.sleep(wait)
                continue
            if status == 410:
                raise _LinkEnded(_Outcome(f"GET {path}: since_too_old", code=4410, reset=True))
            if status in (401, 403, 400):
                raise _LinkEnded(_Outcome(f"GET {path}: {status} {detail}", code=4000 + status))
            raise _LinkEnded(
                _Outcome(
                    f"GET {path}: {status} {detail}", retry_after=_retry_after(response.headers)
                )
            )
        raise _LinkEnded(_Outcome(f"GET {path}: still throttled after {THROTTLE_RETRIES} tries"))

    async def _bootstrap(self) -> None:
        """Load the pool from ``/sync/v1/records``. The cursor is the ``sid`` of the
        first page: frames after it are replayed, and skipped for records that a later
        page already showed at a newer sid."""
        generation = self._generation
        records: list[dict[str, Any]] = []
        cursor: int | None = None
        for t in self.types or (None,):
            page_cursor = None
            for _ in range(MAX_PAGES):
                params: dict[str, Any] = {"limit": PAGE}
                if t is not None:
                    params["t"] = t
                if page_cursor:
                    params["cursor"] = page_cursor
                if not self.load_records:
                    params["limit"] = 1
                body = await self._get_json("/sync/v1/records", params)
                sid = body.get("sid")
                if not isinstance(sid, int) or not isinstance(body.get("records"), list):
                    raise _LinkEnded(_Outcome("GET /sync/v1/records: unexpected answer"))
                cursor = sid if cursor is None else min(cursor, sid)
                if not self.load_records:
                    break  # only the newest sid
                records += [r for r in body["records"] if _valid_record(r)]
                page_cursor = body.get("next_cursor")
                if not page_cursor:
                    break
        if generation != self._generation:
            raise _LinkEnded(_Outcome("token changed during the load", requested=True))
        assert cursor is not None
        self._pool.load(records, cursor)
        log.info("frame client %s: loaded %d records, cursor %d", self.name, len(records), cursor)

    async def _http_catch_up(self, generation: int) -> None:
        for _ in range(MAX_PAGES):
            since = self._pool.cursor
            if since is None or generation != self._generation:
                return
            params: dict[str, Any] = {"since": since, "limit": PAGE}
            if self.types is not None and len(self.types) == 1:
                params["t"] = self.types[0]
            body = await self._get_json("/sync/v1/delta", params)
            frames, next_sid = body.get("frames"), body.get("next")
            if not isinstance(frames, list) or not isinstance(next_sid, int):
                raise _LinkEnded(_Outcome("GET /sync/v1/delta: unexpected answer"))
            self._deliver(frames, generation)
            if generation == self._generation:
                self._pool.advance(next_sid)
            if not body.get("more"):
                return

    # -- internals: the connection loop -----------------------------------------------

    async def _run(self) -> None:
        delay, after, told = 0.0, "start", ""
        while not self._closed:
            if self._halted:
                await self._wake.wait()
                delay, after = 0.0, "restarted"
                continue
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
            attempt = ConnectAttempt(self.backoff.attempt, delay, time.monotonic(), after)
            self._attempts.call(attempt)
            outcome = await self._connect_once()
            if self._state != "offline":
                told = ""  # it was connected: say it again if it happens again
            self.backoff.disconnected()
            after = outcome.why
            self._set_state("offline", outcome.why)
            delay = await self._delay_after(outcome)
            if outcome.why != told and not self._halted:
                told = outcome.why  # once per reason, not once per attempt
                log.info(
                    "frame client %s: %s; next attempt in %.2f s", self.name, outcome.why, delay
                )

    async def _delay_after(self, outcome: _Outcome) -> float:
        """What to do after a connection ended: seconds to wait, or halt."""
        code = outcome.code
        if outcome.requested:
            return 0.0
        if outcome.reset:
            if not self.reload_on_reset:
                self._halt(f"since_too_old: {outcome.why}")
                return 0.0
            self._pool.clear()  # reload from /sync/v1/records on the next connect
            self._resets.call(outcome.why)
            log.info("frame client %s: since_too_old: reloading the pool", self.name)
            return self.backoff.next_delay() if self.backoff.attempt else 0.0
        if code == 4401:
            if await self._renew_token(self._token):
                return self.backoff.next_delay()
            self._halt(f"unauthorized (4401): {outcome.why}; call set_token() with a new token")
            return 0.0
        if code in (4403, 4400):
            self._halt(f"refused ({code}): {outcome.why}")
            return 0.0
        return self.backoff.next_delay(at_least=outcome.retry_after)

    async def _renew_token(self, used: str | None) -> bool:
        """Ask ``token_provider`` for a new token (once for all who saw ``used`` fail)."""
        async with self._token_lock:
            if self._token != used:
                return True  # someone already renewed it
            if self.token_provider is None:
                return False
            try:
                token = await self.token_provider()
            except Exception:
                log.exception("frame client %s: token_provider failed", self.name)
                return False
            if not token:
                return False
            self._token = token
            log.info("frame client %s: got a new token from token_provider", self.name)
            return True

    async def _connect_once(self) -> _Outcome:
        generation = self._generation
        loaded = False
        try:
            if self._pool.cursor is None:
                await self._bootstrap()
                loaded = True
            ws = await self._open_ws()
        except _LinkEnded as exc:
            return exc.outcome
        link = _Link(ws, generation)
        self._set_state("syncing", "connected")
        self.backoff.connected()
        requested = False
        try:
            with anyio.CancelScope() as scope:
                self._link_scope = scope
                if generation != self._generation:
                    scope.cancel()  # set_token() while the handshake ran
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._receive, link, tg.cancel_scope)
                    tg.start_soon(self._heartbeat, link, tg.cancel_scope)
                    tg.start_soon(self._sync, link, tg.cancel_scope, loaded)
            requested = scope.cancel_called
        finally:
            self._link_scope = None
            if link.dead:
                ws.transport.abort()
            else:
                with anyio.move_on_after(2, shield=True):
                    await ws.close()
        self.close_code = ws.close_code
        if link.outcome is not None:
            return link.outcome
        if requested:
            return _Outcome("reconnect requested", requested=True)
        return self._close_outcome(link)

    async def _open_ws(self) -> Any:
        query: dict[str, Any] = {"since": self._pool.cursor}
        if self.types is not None and len(self.types) == 1:
            query["t"] = self.types[0]
        url = f"{self._ws_base}?{urlencode(query)}"
        try:
            return await websockets.connect(
                url,
                additional_headers=self._headers(),
                ping_interval=None,  # our own heartbeat (JSON ping, any message = alive)
                open_timeout=self.connect_timeout,
                close_timeout=2,
                max_size=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            why = f"handshake refused: HTTP {status}"
            code = 4000 + status if status in (401, 403) else None
            wait = _retry_after(exc.response.headers)
            raise _LinkEnded(_Outcome(why, code=code, retry_after=wait)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _LinkEnded(_Outcome(f"cannot connect: {exc!r}")) from None

    def _close_outcome(self, link: _Link) -> _Outcome:
        ws = link.ws
        code = ws.close_code
        if link.dead:
            return _Outcome(f"no message for {self.pong_timeout:g} s: dead connection")
        error = link.error or {}
        why = f"closed {code} {error.get('error') or ws.close_reason or ''}".strip()
        if error.get("detail"):
            why += f": {error['detail']}"
        retry_after = error.get("retry_after")
        wait = float(retry_after) if isinstance(retry_after, int | float) else 0.0
        if code == 4429:
            wait = max(wait, 1.0)
        if code == 4410 or error.get("error") == "since_too_old":
            return _Outcome(why, code=code, reset=True)
        return _Outcome(why, code=code, retry_after=wait)

    async def _receive(self, link: _Link, scope: anyio.CancelScope) -> None:
        try:
            async for message in link.ws:
                link.last_seen = time.monotonic()
                if not isinstance(message, str):
                    log.warning("frame client %s: binary message ignored", self.name)
                    continue
                try:
                    data = json.loads(message)
                except ValueError:
                    log.warning("frame client %s: a message is not JSON, ignored", self.name)
                    continue
                if isinstance(data, list):
                    self._deliver(data, link.generation)
                elif isinstance(data, dict) and data.get("type") == "error":
                    link.error = data
                    log.info(
                        "frame client %s: server error %s: %s",
                        self.name,
                        data.get("error"),
                        data.get("detail"),
                    )
        except websockets.ConnectionClosed:
            pass
        finally:
            scope.cancel()

    async def _heartbeat(self, link: _Link, scope: anyio.CancelScope) -> None:
        next_ping = time.monotonic() + self.ping_interval
        while True:
            now = time.monotonic()
            if now - link.last_seen >= self.pong_timeout:
                link.dead = True
                log.info(
                    "frame client %s: nothing from the server for %.1f s: dead connection",
                    self.name,
                    now - link.last_seen,
                )
                scope.cancel()
                return
            if now >= next_ping:
                with anyio.move_on_after(self.pong_timeout):
                    try:
                        await link.ws.send('{"type":"ping"}')
                    except websockets.ConnectionClosed:
                        return
                next_ping = now + self.ping_interval
            wake = min(next_ping, link.last_seen + self.pong_timeout)
            await anyio.sleep(max(0.01, wake - time.monotonic()))

    async def _sync(self, link: _Link, scope: anyio.CancelScope, loaded: bool) -> None:
        """Catch up over HTTP, then go online. Right after a load from
        ``/sync/v1/records`` there is nothing to read: the WebSocket's ``since=`` covers
        the few frames between that load and the handshake."""
        try:
            if not loaded:
                await self._http_catch_up(link.generation)
        except _LinkEnded as exc:
            link.outcome = exc.outcome
            scope.cancel()
            return
        if link.generation == self._generation:
            self._set_state("online", f"caught up to sid {self._pool.cursor}")

    # -- internals: sending the queue ---------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._closed:
            queue = self._queue
            assert queue is not None
            if self._state != "online" or not len(queue) or self._send_halted:
                await self._changed.wait()
                continue
            batch = queue.head(self.batch_size)
            wait = await self._send(batch)
            if wait is not None:
                with anyio.move_on_after(wait):
                    await self._wake.wait()

    async def _send(self, batch: list[QueuedMutation]) -> float | None:
        """POST one batch; returns seconds to wait before the next try (``None``: go on)."""
        assert self._http is not None
        token = self._token
        body = {"mutations": [m.wire() for m in batch], "client_id": self._client_id}
        try:
            response = await self._http.post(
                "/sync/v1/mutations", json=body, headers=self._headers()
            )
        except httpx.HTTPError as exc:
            log.info("frame client %s: mutations not sent (%r), will retry", self.name, exc)
            return self._send_backoff.next_delay()
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        results = answer.get("results")
        if status in (200, 503) and isinstance(results, list) and len(results) == len(batch):
            transient = self._settle(batch, results)
            if not transient:
                self._send_backoff.attempt = 0
                return None
            return self._send_backoff.next_delay(at_least=_retry_after(response.headers))
        if status == 429 or status >= 500:
            wait = _retry_after(response.headers)
            log.info("frame client %s: mutations refused %d, will retry", self.name, status)
            return self._send_backoff.next_delay(at_least=wait)
        if status == 401:
            if await self._renew_token(token):
                return 0.0
            self._send_halted = True
            self.error = f"mutations refused 401: {answer.get('detail')}; call set_token()"
            log.warning("frame client %s: %s", self.name, self.error)
            return None
        if status == 403:
            self._send_halted = True
            log.warning(
                "frame client %s: mutations refused 403 (%s): kept queued until set_token()",
                self.name,
                answer.get("detail"),
            )
            return None
        # 400 / 413 / 422 for the whole request: drop the mutation it names.
        index = answer.get("index")
        field = answer.get("field")
        if not isinstance(index, int) and isinstance(field, str):
            match = re.match(r"mutations\[(\d+)\]", field)
            index = int(match.group(1)) if match else None
        if not isinstance(index, int) and len(batch) > 1:
            # The batch as a whole (too many, too large for this server): smaller ones.
            self.batch_size = max(1, len(batch) // 2)
            log.info(
                "frame client %s: mutations refused %d (%s): batches of %d from now on",
                self.name,
                status,
                answer.get("detail"),
                self.batch_size,
            )
            return 0.0
        bad = [batch[index]] if isinstance(index, int) and 0 <= index < len(batch) else batch
        result = {"status": status, "error": answer.get("error"), "detail": answer.get("detail")}
        for m in bad:
            self._refused(m, result)
        return None

    def _settle(self, batch: list[QueuedMutation], results: list[Any]) -> bool:
        """Apply a batch's answers; ``True`` if some must be sent again."""
        assert self._queue is not None
        transient = False
        for m, result in zip(batch, results, strict=True):
            if not isinstance(result, dict):
                transient = True
                continue
            status = result.get("status")
            if isinstance(status, int) and 200 <= status < 300:
                self._queue.remove(m.client_tx_id)
                sid = result.get("sid")
                self._pool.acknowledged(m.client_tx_id, sid if isinstance(sid, int) else None)
                overwritten = result.get("overwritten")
                if result.get("conflicts") and isinstance(overwritten, dict):
                    log.info(
                        "frame client %s: %s/%s overwrote %s set by another writer",
                        self.name,
                        m.t,
                        m.id,
                        ", ".join(sorted(overwritten)),
                    )
                    self._conflicts.call(m.t, m.id, overwritten)
            elif isinstance(status, int) and (status >= 500 or status == 429):
                transient = True
            else:
                self._refused(m, result)
        self._poke()
        return transient

    def _refused(self, m: QueuedMutation, result: dict[str, Any]) -> None:
        assert self._queue is not None
        log.warning(
            "frame client %s: mutation %s %s/%s refused %s: %s",
            self.name,
            m.op,
            m.t,
            m.id,
            result.get("status"),
            result.get("detail") or result.get("error"),
        )
        self._queue.remove(m.client_tx_id)
        self._pool.discard(m.client_tx_id)
        self._errors.call(m, result)
        self._poke()
