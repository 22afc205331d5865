"""A Python Yjs client for crdt-sync (or any y-websocket server).

``pycrdt.Provider`` syncs a ``Doc`` over any ``Channel``; this module supplies a
channel over the ``websockets`` library and keeps the awareness protocol, which
``Provider`` ignores, on the side::

    async with connect("ws://127.0.0.1:1234/yjs", "issue/123") as client:
        await client.synced()
        client.doc["body"] = text = Text()
        text += "hello"
        client.awareness.set_local_state({"user": {"name": "py"}})
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import websockets
from pycrdt import Awareness, Doc, Provider

from .codec import AwarenessEntry, Reader, encode_awareness_update, write_var_bytes

log = logging.getLogger(__name__)


class WebSocketChannel:
    """A ``pycrdt.Channel`` over a ``websockets`` connection.

    Sync messages go to the ``Provider`` iterating this channel; awareness messages
    are applied to ``awareness`` instead.
    """

    def __init__(self, websocket: Any, path: str, awareness: Awareness | None = None) -> None:
        self._ws = websocket
        self._path = path
        self._awareness = awareness
        self.closed = anyio.Event()

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebSocketChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            self.closed.set()
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._ws.send(message)

    async def recv(self) -> bytes:
        while True:
            message = await self._ws.recv()
            if isinstance(message, str):
                raise ValueError("server sent a text frame")
            if message[:1] == b"\x01" and self._awareness is not None:
                payload = Reader(message[1:]).var_bytes()
                self._awareness.apply_awareness_update(payload, "remote")
                continue
            if message[:1] in (b"\x01", b"\x02", b"\x03"):
                continue  # awareness without a handler, auth, query: not the Provider's business
            return message


class YjsClient:
    """A connected doc with its provider and awareness."""

    def __init__(self, doc: Doc, websocket: Any, provider: Provider, awareness: Awareness) -> None:
        self.doc = doc
        self.websocket = websocket
        self.provider = provider
        self.awareness = awareness

    async def synced(self) -> None:
        """Wait until the server's sync step2 has been applied (bound it with a timeout)."""
        await self.provider.synced.wait()

    @property
    def remote_states(self) -> dict[int, dict[str, Any]]:
        """Awareness states of other clients, by client id."""
        return {
            cid: state
            for cid, state in self.awareness.states.items()
            if cid != self.awareness.client_id and state is not None
        }

    async def send_awareness(self, entries: list[AwarenessEntry]) -> None:
        """Send raw awareness entries (tests, bridges)."""
        await self.websocket.send(encode_awareness_update(entries))


@asynccontextmanager
async def connect(
    server_url: str, doc_name: str, doc: Doc | None = None, **ws_options: Any
) -> AsyncIterator[YjsClient]:
    """Connect a ``Doc`` to ``server_url/doc_name`` (the name is URL-encoded).

    Leaving the context sends what is queued, announces the local awareness state's
    removal, and closes the socket.
    """
    doc = doc if doc is not None else Doc()
    url = server_url.rstrip("/") + "/" + quote(doc_name, safe="/")
    ws_options.setdefault("max_size", None)
    async with websockets.connect(url, **ws_options) as websocket:
        awareness = Awareness(doc)
        awareness.set_local_state(None)  # nothing to show until the caller sets a state

        def send_local(topic: str, changes: tuple[dict[str, Any], Any]) -> None:
            change, origin = changes
            if topic != "update" or origin != "local":
                return
            ids = change["added"] + change["updated"] + change["removed"]
            payload = awareness.encode_awareness_update(ids)
            message = b"\x01" + write_var_bytes(payload)
            pending.append(message)
            wake.set()

        pending: list[bytes] = []
        wake = anyio.Event()
        awareness.observe(send_local)
        channel = WebSocketChannel(websocket, url, awareness)
        provider = Provider(doc, channel, log=log)

        async def pump_awareness() -> None:
            nonlocal wake
            while True:
                await wake.wait()
                wake = anyio.Event()
                while pending:
                    await websocket.send(pending.pop(0))

        async with provider, anyio.create_task_group() as tg:
            tg.start_soon(pump_awareness)
            client = YjsClient(doc, websocket, provider, awareness)
            try:
                yield client
            finally:
                if awareness.get_local_state() is not None:
                    awareness.set_local_state(None)
                    with anyio.move_on_after(2):
                        while pending:
                            await websocket.send(pending.pop(0))
                tg.cancel_scope.cancel()
