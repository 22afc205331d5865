"""The real app (``create_app``), whose entry is :class:`BrowserGuard` then the front
door, served by uvicorn in this process on 127.0.0.1 and a free port.

``guard=False`` serves the front door without the guard in front (to show what the
guard alone stops).
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import uvicorn

from crdt_sync.app import create_app
from crdt_sync.server import bind_socket
from crdt_sync.settings import Settings


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    port: int

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://", 1)


@asynccontextmanager
async def guarded_server(
    tmp_path: Path, allowed_origins: Sequence[str] = (), *, guard: bool = True
) -> AsyncIterator[Served]:
    """Serve the app (guarded unless ``guard=False``) until the block ends."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    # No per-client read throttle: the tests read right after they write.
    settings = Settings(
        db=str(tmp_path / "guarded.db"),
        port=port,
        delta_min_interval_ms=0,
        allowed_origins=tuple(allowed_origins),
    )
    app = create_app(settings)
    runtime = app.state.runtime
    asgi = app if guard else app.front_door
    config = uvicorn.Config(
        asgi,
        lifespan="on",
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        ws_ping_interval=None,
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(10):
            while not server.started:
                if task.done():
                    task.result()
                await anyio.sleep(0.01)  # polling readiness, not timing an assertion
        yield Served(f"http://127.0.0.1:{port}", port)
    finally:
        await runtime.shutdown()
        server.should_exit = True
        with anyio.fail_after(10):
            await task
        sock.close()
        # uvicorn run in this process has been seen (CI, under load) to drop an accepted
        # browser connection at shutdown without closing its transport; collected later,
        # its ResourceWarning failed whichever test ran then. Collect it here, where it
        # belongs, as the separate server process of every other test would.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
