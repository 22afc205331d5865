"""The ASGI application: routes, lifespan (store and rooms), shutdown.

``create_app(settings)`` returns a Starlette app. Its lifespan opens the store and
the room manager; :meth:`Runtime.shutdown` (called by the server on SIGINT/SIGTERM,
before the ASGI server stops) closes every WebSocket with 1001 and persists every
room, so that nothing acknowledged is lost on a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from persistence.store import Store, StoreError
from rooms.close_codes import CloseCode
from rooms.feed_hub import FeedHub
from rooms.frame_bus import FrameBus, LocalFrameBus
from rooms.frame_waiters import FrameWaiters
from rooms.listeners import Listeners
from rooms.manager import RoomManager, RoomSettings
from rooms.supervisor import Supervisor

from . import openapi, web_pages
from .admin_api import AdminApi
from .asgi import route_path
from .auth.authenticator import Authenticator
from .auth.sessions import Sessions
from .browser_guard import BrowserGuard
from .cluster import Buses, node_id_of, open_buses, open_store
from .docs_api import DocsApi
from .errors import json_error
from .front_door import FrontDoor, authenticator_from
from .inspect_api import InspectApi
from .metrics import Metrics
from .presence import Presence
from .ratelimit import ConnectionLimiter, SlidingWindowLimiter
from .record_feed import RecordFeed
from .settings import Settings
from .sync_api import SyncApi
from .sync_stream import FrameStreams
from .throttle import ReadThrottle
from .version_retention import DAY_MS, HOUR_MS, RetentionPolicy
from .versions import VersionKeeper
from .versions_api import VersionsApi
from .webhooks import WebhookSender
from .yjs_endpoint import YjsEndpoint

log = logging.getLogger(__name__)

#: Seconds a shutting-down node waits for its Redis buses to close.
BUS_CLOSE_TIMEOUT = 3.0

#: Longest a health check waits for the store's write probe.
PROBE_TIMEOUT = 2.0
#: A store that committed nothing for this long is probed by a health check, so an
#: idle node notices a database it lost (a busy one notices at its next commit).
IDLE_PROBE_SECONDS = 5.0


class Runtime:
    """What the routes share while the app runs.

    Auth and limits (the front door and the endpoints behind it):

    - ``auth``: the :class:`Authenticator` (open when no key is configured);
    - ``sessions``: every live Yjs and frame-feed connection, for revocation;
    - ``ws_limiter``: WebSocket messages per ``principal.limit_key(ip)``
      (``None``: no limit);
    - ``http_limiter``: HTTP requests per ``principal.limit_key(ip)`` (``None``: none);
    - ``connections``: open WebSockets and streams per actor and per IP.
    """

    def __init__(self, settings: Settings, auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.auth = auth if auth is not None else authenticator_from(settings)
        self.sessions = Sessions()
        window = settings.rate_limit_window
        self.ws_limiter = (
            SlidingWindowLimiter(settings.rate_limit_ws_messages, window)
            if settings.rate_limit_ws_messages
            else None
        )
        self.http_limiter = (
            SlidingWindowLimiter(settings.rate_limit_http_requests, window)
            if settings.rate_limit_http_requests
            else None
        )
        self.connections = ConnectionLimiter(
            settings.max_connections_per_actor, settings.max_connections_per_ip
        )
        #: Yjs updates refused because the connection's grant is read-only.
        self.readonly_refused = 0
        self.front_door: Any = None  # set by CrdtSyncApp: its refusal count is a metric
        self.store: Store | None = None
        self._manager: RoomManager | None = None
        self.shutting_down = False
        self.started = anyio.Event()
        #: Why the lifespan could not start (the store would not open), for its log line.
        self.start_failure: str | None = None
        self.hub = FeedHub()
        self.frame_waiters = FrameWaiters(
            settings.max_long_polls, reads=max(4, settings.delta_max_concurrency)
        )
        #: This node's id in the cluster (logs, metrics, Redis lease).
        self.node_id = node_id_of(settings)
        #: Where committed frames go, on their way to the hub (and other nodes'); set
        #: by :meth:`running` (on Redis it reads gaps from the store).
        self.frame_bus: FrameBus = LocalFrameBus()
        #: The buses this node runs on (``buses.rooms`` is ``None`` while it is alone).
        self.buses: Buses | None = None
        self.throttle = ReadThrottle(settings.delta_min_interval_ms, settings.delta_max_concurrency)
        self._feed: RecordFeed | None = None
        self._presence: Presence | None = None
        self._versions: VersionKeeper | None = None
        self.supervisor = Supervisor()
        #: The webhook sender (``None``: no ``--webhook``).
        self.webhooks: WebhookSender | None = None
        self._probing = anyio.Lock()
        self._probe_failed = False  # the last probe failed (its warning was logged)
        self._pending_probe: asyncio.Future[None] | None = None
        self._commits_seen = (-1, 0.0)  # store commits, and when that count was first seen
        self.metrics = Metrics(self)

    @property
    def feed(self) -> RecordFeed:
        if self._feed is None:
            raise RuntimeError("expected STARTED, got NOT STARTED")
        return self._feed

    @property
    def presence(self) -> Presence:
        if self._presence is None:
            raise RuntimeError("expected STARTED, got NOT STARTED")
        return self._presence

    @property
    def versions(self) -> VersionKeeper:
        if self._versions is None:
            raise RuntimeError("expected STARTED, got NOT STARTED")
        return self._versions

    @property
    def manager(self) -> RoomManager:
        if self._manager is None:
            raise RuntimeError("expected STARTED, got NOT STARTED")
        return self._manager

    def open_store(self) -> Store:
        return open_store(self.settings)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        settings = self.settings
        store = self.open_store()
        try:
            await store.start()
        except StoreError as exc:
            # The node does not start without its store (the operator's supervisor
            # starts it again): one line that says why, not a traceback.
            self.start_failure = f"cannot start: {exc}"
            raise
        buses = self.buses = open_buses(settings, store, self.node_id)
        self.frame_bus = buses.frames
        self.frame_bus.subscribe(self.hub.publish)
        self.frame_bus.subscribe(self.frame_waiters.publish)
        if settings.webhook:
            self.webhooks = WebhookSender(settings, store, self.node_id)
            self.frame_bus.subscribe(self.webhooks.wake)
            log.info(
                "webhooks: %s",
                ", ".join(f"{e.id} -> {e.label}" for e in self.webhooks.endpoints),
            )
        if buses.rooms is not None:
            log.info("node %s: several nodes, on Redis and the shared store", self.node_id)
        try:
            await buses.start()
            self.store = store
            room_settings = RoomSettings(
                idle_seconds=settings.room_idle_seconds,
                compact_updates=settings.compact_updates,
                ping_interval=settings.ping_interval,
                ping_timeout=settings.ping_timeout,
                max_awareness_per_connection=settings.max_awareness_ids_per_connection,
                max_awareness_per_room=settings.max_awareness_ids_per_room,
                max_awareness_state_bytes=settings.max_awareness_state_bytes,
                max_pending_bytes=settings.max_pending_bytes,
                max_rooms=settings.max_rooms,
                max_doc_bytes=settings.max_doc_bytes,
            )
            feed = RecordFeed(
                store,
                self.frame_bus,
                coalesce_ms=settings.frame_coalesce_ms,
                retention=settings.frame_retention,
            )
            versions = self._versions = VersionKeeper(
                store,
                auto=settings.auto_versions,
                every_updates=settings.version_every_updates,
                idle_seconds=settings.version_idle_seconds,
                policy=RetentionPolicy(
                    keep_all_ms=round(settings.version_keep_all_hours * HOUR_MS),
                    hourly_ms=round(settings.version_hourly_days * DAY_MS),
                    max_bytes_ratio=settings.version_max_bytes_ratio,
                    min_budget_bytes=settings.version_min_budget_bytes,
                ),
            )
            feed.mutations.on_change = versions.noted
            async with RoomManager(
                store,
                room_settings,
                listener=Listeners(feed, versions),
                supervisor=self.supervisor,
                broadcaster=buses.rooms,
            ) as manager:
                self._manager = manager
                self._feed = feed
                self._presence = feed.presence = Presence(manager, self.hub)
                async with anyio.create_task_group() as tg:
                    await tg.start(feed.run, manager)
                    await tg.start(versions.run, manager)
                    tg.start_soon(self._presence.run)
                    if self.webhooks is not None:
                        tg.start_soon(self.supervisor.loop, "webhooks", self.webhooks.run)
                    self.started.set()
                    yield self
                    await self.shutdown()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await store.close()  # the frames of its last commits are published
                except StoreError as exc:
                    # A write that failed during an outage is reported here once more;
                    # its clients were told then (503 / 4503), and the rooms stored
                    # their whole state when they unloaded.
                    log.error("store: %s", exc)
                finally:
                    await self._close_buses(buses)
                    await self.auth.aclose()

    async def problems(self) -> dict[str, str]:
        """What keeps this node from serving fully now (empty: healthy).

        The store must take writes (its writer alive and, after a failed commit, a
        write probe committed) and every supervised loop must be running.
        """
        found: dict[str, str] = {}
        store = self.store
        if store is None:
            return {"store": "not open"}
        problem = store.health()
        if problem is not None or self._store_idle(store):
            # Cheap while all is well; after a failed commit (whatever the backend calls
            # it) or a quiet spell, one probe at a time finds out whether writes go
            # through (most checks wait for it): without it nothing would clear a
            # failure on a node that takes no writes, nor notice one on an idle node.
            async with self._probing:
                problem = store.health()
                if problem is not None or self._store_idle(store):
                    problem = await self._probe(store)
        if problem is not None:
            found["store"] = problem
        # The buses are not checked here: the local one cannot fail, and a Redis outage
        # is reported (redis_status) without taking the node out of service: its
        # clients keep working, and every node would be taken out at once.
        for name, why in self.supervisor.problems().items():
            found[f"task {name}"] = why
        return found

    def _store_idle(self, store: Store) -> bool:
        """No commit for :data:`IDLE_PROBE_SECONDS` (since this was last asked)."""
        commits, since = self._commits_seen
        now = anyio.current_time()
        if store.stats().commits != commits:
            self._commits_seen = (store.stats().commits, now)
            return False
        return now - since >= IDLE_PROBE_SECONDS

    async def _probe(self, store: Store) -> str | None:
        """One write probe at a time, waited for at most :data:`PROBE_TIMEOUT`; the
        store's problem after it (a failing probe is logged once per outage).

        A probe still queued from an earlier check is waited for, not joined by
        another: during a long outage the writer's queue must not fill with probes
        (every real write would wait behind them).
        """
        pending = self._pending_probe
        if pending is None or pending.done():
            pending = self._pending_probe = asyncio.ensure_future(store.probe())
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        failure: StoreError | None = None
        with anyio.move_on_after(PROBE_TIMEOUT) as scope:
            try:
                await asyncio.shield(pending)
            except StoreError as exc:
                failure = exc
        if scope.cancelled_caught:
            return "write probe timed out"
        if failure is not None:
            if not self._probe_failed:
                log.warning("health: store write probe failed: %s", failure)
            self._probe_failed = True
            return store.health() or f"write probe failed: {failure}"
        if self._probe_failed:
            log.info("health: store write probe committed: the store takes writes again")
            self._probe_failed = False
        return store.health()

    async def _close_buses(self, buses: Buses) -> None:
        """Close the buses, waiting at most :data:`BUS_CLOSE_TIMEOUT`: a Redis client
        stuck in a call that ignores cancellation must not keep the node from exiting
        (its lease then lapses, and the others drop its cursors within 5 s)."""
        closing = asyncio.ensure_future(buses.close())
        done, _ = await asyncio.wait({closing}, timeout=BUS_CLOSE_TIMEOUT)
        if not done:
            log.error(
                "shutdown: the buses to other nodes did not close in %.0f s", BUS_CLOSE_TIMEOUT
            )
        elif (exc := closing.exception()) is not None:
            log.error("shutdown: closing the buses failed: %r", exc)

    def redis_status(self) -> str:
        """``off`` (one node), ``ok``, or why the buses to other nodes are down."""
        if self.buses is None or self.buses.rooms is None:
            return "off"
        return self.buses.health() or "ok"

    async def shutdown(self) -> None:
        """Close every WebSocket with 1001 and persist every room (idempotent)."""
        if self.shutting_down or self._manager is None:
            return
        self.shutting_down = True
        rooms = len(self._manager.rooms)
        conns = self._manager.connection_count
        log.info("shutting down: closing %d connections in %d rooms", conns, rooms)
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        self.frame_waiters.close()  # long-polls answer what they have
        with anyio.move_on_after(self.settings.shutdown_timeout) as scope:
            await self._manager.unload_all()
        if scope.cancelled_caught:
            log.error("shutdown: rooms not persisted within %.1f s", self.settings.shutdown_timeout)


def create_app(
    settings: Settings,
    on_ready: Callable[[], None] | None = None,
    *,
    auth: Authenticator | None = None,
    port: int | None = None,
) -> CrdtSyncApp:
    """Build the ASGI app.

    Args:
        settings: Server settings.
        on_ready: Called once the store and rooms are up (the CLI prints its ready line).
        auth: The authenticator (default: built from ``settings``).
        port: The port actually bound (``--port 0``), for the default allowed origins.
    """
    runtime = Runtime(settings, auth)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runtime.running():
            if on_ready is not None:
                on_ready()
            yield

    async def health() -> tuple[str, dict[str, str]]:
        if runtime.shutting_down:
            return "shutting_down", {}
        if not runtime.started.is_set():
            return "starting", {}
        problems = await runtime.problems()
        return ("degraded" if problems else "ok"), problems

    async def healthz(request: Request) -> Response:
        """200 while the store takes writes and every loop runs; else 503 and why."""
        status, problems = await health()
        manager = runtime._manager
        body: dict[str, Any] = {
            "status": status,
            "node": runtime.node_id,
            "store": problems.get("store", "ok") if status != "starting" else "starting",
            "redis": runtime.redis_status(),
            "rooms": len(manager.rooms) if manager is not None else 0,
            "connections": manager.connection_count if manager is not None else 0,
            "frame_subscribers": len(runtime.hub),
        }
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def readyz(request: Request) -> Response:
        """For load balancers: 200 only when ready; 503 starting, shutting down, degraded."""
        status, problems = await health()
        if status == "ok":
            return JSONResponse({"status": "ready"})
        body: dict[str, Any] = {"status": status}
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_error(exc.status_code, error, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return json_error(500, "internal_error", "the server failed to handle this request")

    yjs = YjsEndpoint(settings, runtime)
    streams = FrameStreams(runtime)
    routes: list = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", runtime.metrics.endpoint),
        Route("/openapi.json", openapi.endpoint),
        WebSocketRoute("/yjs/{doc:path}", yjs),
        *VersionsApi(runtime).routes(),  # before DocsApi: /docs/{doc} matches any path
        *DocsApi(runtime).routes(),
        *SyncApi(runtime).routes(),
        *AdminApi(runtime).routes(),
        *InspectApi(runtime).routes(),
        *streams.routes(),
    ]
    routes += web_pages.routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, 500: server_error},
    )
    app.state.runtime = runtime
    return CrdtSyncApp(app, yjs, streams, port=settings.port if port is None else port)


class CrdtSyncApp:
    """The ASGI entry point: :class:`BrowserGuard`, then the :class:`FrontDoor`, then
    the routes. Nothing reaches a route, WebSockets included, but through both.

    The WebSocket endpoints, where every message counts, are called directly: behind
    Starlette's router every ``send`` of a connection would pass through two
    middleware wrappers (measured: about a tenth of the relay CPU). Everything else,
    and WebSocket paths these do not match, goes to the Starlette app.
    """

    def __init__(
        self, app: Starlette, yjs: YjsEndpoint, streams: FrameStreams, *, port: int = 0
    ) -> None:
        self.app = app
        self.state = app.state
        self._yjs = yjs
        self._streams = streams
        runtime: Runtime = app.state.runtime
        settings = runtime.settings
        self.front_door = FrontDoor(
            self._dispatch,
            runtime.auth,
            http_limiter=runtime.http_limiter,
            connections=runtime.connections,
        )
        runtime.front_door = self.front_door
        self._entry = BrowserGuard(self.front_door, settings.allowed_origins, settings.host, port)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._entry(scope, receive, self._lifespan_send(send))
            return
        await self._entry(scope, receive, send)

    def _lifespan_send(self, send: Any) -> Any:
        """``send`` for the lifespan: a startup that failed for a known reason (the
        store cannot be opened) is reported as that reason, which the ASGI server
        logs, instead of Starlette's traceback."""
        runtime: Runtime = self.state.runtime

        async def lifespan_send(message: dict) -> None:
            if message["type"] == "lifespan.startup.failed" and runtime.start_failure:
                message = {**message, "message": runtime.start_failure}
            await send(message)

        return lifespan_send

    def _dispatch(self, scope: dict, receive: Any, send: Any) -> Awaitable[None]:
        """Behind the front door: the route's handler (returned, not awaited here, so an
        open WebSocket does not keep this frame too)."""
        if scope["type"] == "websocket":
            path = route_path(scope)
            if path.startswith("/yjs/"):
                scope["path_params"] = {"doc": path[5:]}
                return self._yjs(scope, receive, send)
            if path == "/sync/v1/ws":
                return self._streams.websocket(scope, receive, send)
        return self.app(scope, receive, send)
