"""A Yjs client that sends an edit and goes at once (a tab closed right after typing)
gets its edit applied, even when the server's write to it fails first.

Seen with the npm y-websocket provider: its last update, its awareness removal and its
close frame came in one read, the server's next write to it failed (the peer was
gone), and that close stopped the reading before the queued update was handled: the
edit was lost. The real app runs in-process; the endpoint is driven over ASGI.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text

from crdt_sync.app import create_app
from crdt_sync.settings import Settings
from persistence.sqlite import SQLiteStore
from rooms.codec import encode_sync_update

pytestmark = pytest.mark.anyio


class GoneClient:
    """A client whose messages are all in the server's receive queue already, ending
    with its disconnect, and to which every write fails (it has gone)."""

    def __init__(self, frames: list[bytes]) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        for frame in frames:
            self.inbox.put_nowait({"type": "websocket.receive", "bytes": frame})
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.accepted = False

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            self.accepted = True
            return
        raise OSError("the client is gone")


def scope(doc: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": f"/yjs/{doc}",
        "raw_path": f"/yjs/{doc}".encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 1234),
        "subprotocols": [],
        "scheme": "ws",
    }


async def test_an_edit_sent_just_before_the_client_went_is_applied(tmp_path: Path) -> None:
    app = create_app(Settings(db=str(tmp_path / "crdt-sync.db")))
    runtime = app.state.runtime
    edit = Doc()
    edit.get("body", type=Text).insert(0, "typed just before closing the tab")
    client = GoneClient([encode_sync_update(edit.get_update())])
    async with runtime.running():
        with anyio.fail_after(10):
            await app(scope("notes/gone"), client.receive, client.send)
        assert client.accepted
    # The node has stopped (everything it held is stored): what does the store have?
    async with SQLiteStore(tmp_path / "crdt-sync.db") as store:
        stored = await store.load("default", "notes/gone")
    assert stored is not None, "the edit was not stored"
    doc = Doc()
    for update in ([stored.snapshot] if stored.snapshot else []) + list(stored.updates):
        doc.apply_update(update)
    assert str(doc.get("body", type=Text)) == "typed just before closing the tab"
