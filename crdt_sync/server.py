"""Run the app on hypercorn: pre-bound socket, ready line, graceful signals.

The socket is bound here, before hypercorn starts, so that ``--port 0`` works and
the ready line can name the real port. On SIGINT/SIGTERM the shutdown trigger
first lets the app close every WebSocket with 1001 and persist its rooms, then
returns so hypercorn stops accepting and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config

from .app import Runtime, create_app
from .settings import Settings

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def hypercorn_config(settings: Settings, fd: int) -> Config:
    config = Config()
    config.bind = [f"fd://{fd}"]
    # The app refuses frames over --max-message-bytes itself (close 1009 plus a log
    # line); hypercorn's own limit only stops a frame far past it from being buffered.
    config.websocket_max_message_size = settings.max_message_bytes + 1024 * 1024
    # No hypercorn pings: its ping task outlives a closed socket by up to one interval
    # (holding shutdown for graceful_timeout) and ASGI never shows the app a pong. The
    # room manager probes silent clients at the Yjs level instead (see rooms.manager).
    config.websocket_ping_interval = None
    config.graceful_timeout = settings.shutdown_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit code."""
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
        return 1
    url = url_of(sock)
    config = hypercorn_config(settings, sock.detach())

    def ready() -> None:
        ws = url.replace("http://", "ws://", 1)
        print(f"crdt-sync ready on {url} (Yjs: {ws}/yjs/<doc>, db: {settings.db})", flush=True)

    app = create_app(settings, on_ready=ready)
    runtime: Runtime = app.state.runtime

    async def shutdown_trigger() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                break
        await runtime.shutdown()

    try:
        asyncio.run(serve(app, config, shutdown_trigger=shutdown_trigger))  # type: ignore[arg-type]
    except Exception as exc:
        log.error("server failed: %s", exc, exc_info=sys.exc_info())
        return 1
    log.info("stopped")
    return 0
