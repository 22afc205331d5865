"""Stock pycrdt-websocket reference server for ``bench/compare.py``.

``ASGIServer(WebsocketServer(...))`` served by hypercorn, the same ASGI server and socket
setup as crdt-sync (pre-bound socket so that ``--port 0`` works, no hypercorn pings), no
persistence. Rooms are the WebSocket path (``ws://HOST:PORT/<room>``) and are dropped when
their last client leaves (``auto_clean_rooms``, the default). Exceptions of single
connections are logged (``exception_logger``) instead of stopping the server. SIGTERM ends
it at once (nothing to flush).

    python bench/ref_pycrdt_server.py --host 127.0.0.1 --port 0

prints ``ref-pycrdt ready on http://HOST:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pycrdt.websocket import ASGIServer, WebsocketServer
from pycrdt.websocket.websocket_server import exception_logger


async def run(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    url = "http://{}:{}".format(*sock.getsockname()[:2])

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.websocket_ping_interval = None
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    websocket_server = WebsocketServer(exception_handler=exception_logger)
    asgi = ASGIServer(websocket_server)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    print(f"ref-pycrdt ready on {url}", flush=True)
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await asgi(scope, receive, send)

    async with websocket_server:
        # a trigger that never fires: hypercorn then leaves SIGINT/SIGTERM to main()
        await serve(app, config, shutdown_trigger=asyncio.Event().wait)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    # Nothing to persist or flush: SIGINT/SIGTERM end the process at once, without noise.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: os._exit(0))
    asyncio.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
