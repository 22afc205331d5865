"""The whole ASGI app on a SQLite file, driven in-process through httpx (no socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from crdt_sync.app import Runtime, create_app
from crdt_sync.settings import Settings


@asynccontextmanager
async def running_app(tmp_path: Path) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    app = create_app(Settings(db=str(tmp_path / "crdt-sync.db"), frame_coalesce_ms=0))
    runtime: Runtime = app.state.runtime
    async with runtime.running():
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield runtime, http
