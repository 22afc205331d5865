"""Run the app on an ASGI server: pre-bound socket, ready line, graceful signals.

``--server`` picks hypercorn, uvicorn or granian (the benchmark in ``bench/`` shows
why the default is what it is). For hypercorn and uvicorn the socket is bound here,
before the server starts, so that ``--port 0`` works and the ready line names the
real port; granian binds its own socket, so ``--port 0`` picks a free port first.

On SIGINT/SIGTERM the app first closes every WebSocket with 1001 and persists its
rooms (:meth:`Runtime.shutdown`), then the server stops accepting and exits. A
second signal during that stops at once.

No server pings: ASGI never shows the app a pong (and hypercorn's ping task outlived
closed sockets). The room manager probes silent clients at the Yjs level instead.
WebSocket compression (permessage-deflate) is off where the server lets us: every
receiver would compress its own copy of a broadcast, undoing "encode once".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from persistence.store import StoreError

from .app import Runtime, create_app
from .cluster import store_label
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)


def bind_socket(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6), listening unless ``listen``
    is false.

    Args:
        reuse_port: Set ``SO_REUSEPORT`` (Linux): several processes' sockets on one port,
            the kernel spreading connections over those that listen.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns Nagle's
    # algorithm off (TCP_NODELAY) only on sockets whose proto says TCP. With Nagle on,
    # a response written in two parts waits for the client's delayed ACK: 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def frame_limit(settings: Settings) -> int:
    # The app refuses frames over --max-message-bytes itself (close 1009 plus a log
    # line); the server's own limit only stops a frame far past it from being buffered.
    return settings.max_message_bytes + 1024 * 1024


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop for ``--loop``: uvloop's, or ``None`` for asyncio's own.

    ``auto`` takes uvloop where it is installed (a dependency on Linux and macOS):
    the same app on it costs about a third less server CPU per delivered update, and
    its p99 under load is several times lower (README, "Choosing the ASGI server").
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # auto without uvloop (Settings refuses --loop uvloop then)
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    """The running loop, for the ready line: ``uvloop`` or ``asyncio``."""
    try:
        module = type(asyncio.get_running_loop()).__module__
    except RuntimeError:  # called off the loop (granian's own threads)
        return "-"
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def run_on_loop(main: Coroutine[Any, Any, Any], settings: Settings) -> Any:
    """``asyncio.run(main)`` on the loop ``--loop`` picks."""
    with asyncio.Runner(loop_factory=loop_factory(settings.loop)) as runner:
        return runner.run(main)


def check_database(path: str) -> None:
    """Open (create, migrate) and close the store at ``path`` before any server starts.

    A store that cannot open would otherwise fail inside the ASGI lifespan, where
    uvicorn prints a traceback and exits 3 (hypercorn: its own way). Here it is one
    line naming the flag, and the CLI exits 2 like for any other bad setting.

    Raises:
        SettingsError: the database cannot be opened (missing directory, not a
            database, no permission, ...).
    """
    from persistence.sqlite import SQLiteStore

    async def open_and_close() -> None:
        store = SQLiteStore(path)
        await store.start()
        await store.close()

    try:
        asyncio.run(open_and_close())
    except StoreError as exc:
        raise SettingsError(f"--db {path!r}: {exc}") from None


def run(
    settings: Settings,
    auth: Any = None,
    *,
    sock: socket.socket | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit code.

    Args:
        auth: The :class:`~crdt_sync.auth.Authenticator` the CLI built and checked
            (default: built from ``settings``).
        sock: A listening socket to serve on (a worker's, see :mod:`crdt_sync.workers`);
            default: bind ``--host``/``--port`` here.
        on_ready: Called with the loop's name once the app is up, instead of printing
            the ready line (a worker tells its supervisor, which prints one line).
    """
    if settings.workers > 1 and sock is None:
        from .workers import run_workers

        return run_workers(settings)
    if sock is None:
        try:
            sock = bind_socket(settings.host, settings.port)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
            return 1
    url = url_of(sock)

    def ready() -> None:
        freeze_startup_objects()
        if on_ready is not None:
            on_ready(loop_name())
            return
        print(ready_line(url, settings, loop_name()), flush=True)

    app = create_app(settings, on_ready=ready, auth=auth, port=sock.getsockname()[1])
    runtime: Runtime = app.state.runtime
    serve = {"hypercorn": _hypercorn, "uvicorn": _uvicorn, "granian": _granian}[settings.server]
    try:
        # A worker ignores repeated stop signals: its supervisor escalates itself (SIGKILL
        # on a second signal to it), and a service manager that signals every process of
        # the group (systemd's default KillMode) must not make the repeat a "stop now".
        serve(app, runtime, settings, sock, repeat_stops=on_ready is None)
    except Exception as exc:
        log.error("server failed: %s", exc, exc_info=sys.exc_info())
        return 1
    log.info("stopped")
    return 0


def freeze_startup_objects() -> None:
    """Take what is alive once the app is up (modules, classes, functions, settings:
    about 66,000 objects) out of the cyclic collector's reach for good. A full
    collection then traverses only what serving created, so its pause, which stops
    every room of the process, is shorter; and these objects never were garbage."""
    gc.collect()
    gc.freeze()


def ready_line(url: str, settings: Settings, loop: str, workers: int = 1) -> str:
    """``crdt-sync ready on URL (...)``: what scripts and tests wait for on stdout."""
    ws = url.replace("http://", "ws://", 1)
    tail = f", workers: {workers}" if workers > 1 else ""
    return (
        f"crdt-sync ready on {url} (Yjs: {ws}/yjs/<doc>, db: {store_label(settings)}, "
        f"server: {settings.server}, loop: {loop}{tail})"
    )


def _hypercorn(
    app: Any, runtime: Runtime, settings: Settings, sock: socket.socket, repeat_stops: bool
) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.websocket_max_message_size = frame_limit(settings)
    config.websocket_ping_interval = None
    config.graceful_timeout = settings.shutdown_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    async def shutdown_trigger() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                break
            if not repeat_stops:  # the handlers stay while shutting down: repeats wait
                await runtime.shutdown()
                return
        await runtime.shutdown()

    run_on_loop(serve(app, config, shutdown_trigger=shutdown_trigger), settings)  # type: ignore[arg-type]


def _uvicorn(
    app: Any, runtime: Runtime, settings: Settings, sock: socket.socket, repeat_stops: bool
) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        ws_max_size=frame_limit(settings),
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        server_header=False,
    )

    class Server(uvicorn.Server):
        """Shuts the app down (1001, rooms stored) before uvicorn stops serving."""

        stopping: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Not uvicorn's: it re-raises the signal after a graceful stop, so the
            # process would die by it (exit -15) instead of exiting 0.
            if self.stopping is not None:  # a second signal: stop now
                if repeat_stops:
                    log.warning("received %s again: stopping now", signal.Signals(sig).name)
                    self.should_exit = self.force_exit = True
                else:
                    log.info("received %s again: already stopping", signal.Signals(sig).name)
                return
            asyncio.get_event_loop().call_soon_threadsafe(self._begin, sig)

        def _begin(self, sig: int) -> None:
            if self.stopping is None:
                log.info("received %s", signal.Signals(sig).name)
                self.stopping = asyncio.ensure_future(self._stop())

        async def _stop(self) -> None:
            await runtime.shutdown()
            self.should_exit = True

    run_on_loop(Server(config).serve(sockets=[sock]), settings)


def _granian(
    app: Any, runtime: Runtime, settings: Settings, sock: socket.socket, repeat_stops: bool
) -> None:
    try:
        from granian.constants import Interfaces
        from granian.server.embed import Server
    except ImportError:
        hint = "pip install 'crdt-sync[granian]'"
        raise RuntimeError(f"--server granian needs granian: {hint}") from None
    log.warning(
        "granian is experimental here: it loses close frames and codes (1001 on shutdown, "
        "4429, 1003) and slow-client handling; see README"
    )

    host, port = sock.getsockname()[:2]
    sock.close()  # granian binds its own socket: hand the port over
    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        websockets=True,
        backlog=2048,
        log_enabled=False,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        async def stop_all() -> None:
            await runtime.shutdown()
            server.stop()

        def on_signal(sig: int) -> None:
            log.info("received %s", signal.Signals(sig).name)
            if stopping:  # a second signal: stop now
                server.stop()
            else:
                stopping.append(asyncio.ensure_future(stop_all()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        await server.serve()

    run_on_loop(main(), settings)
