"""A Python Yjs client for crdt-sync (or any y-websocket server).

It speaks the y-websocket protocol over the ``websockets`` library: sync (step1,
step2, updates) and awareness (presence)::

    async with connect("ws://127.0.0.1:1234/yjs", "issue/123") as client:
        await client.synced()
        client.doc["body"] = text = Text()
        text += "hello"
        client.awareness.set_local_state({"user": {"name": "py"}})

Unlike ``pycrdt.Provider``, which forwards every transaction of the doc, this client
sends only local changes: updates received from the server are applied without
being echoed back. When the server closes the connection (shutdown, ``kill -9``,
a close code) the session simply ends: :attr:`YjsClient.closed` is set and
:attr:`YjsClient.close_code` tells why; the caller's code is not cancelled.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import websockets
from pycrdt import Awareness, Doc

from rooms.codec import (
    AwarenessEntry,
    AwarenessUpdate,
    Reader,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode_message,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_step2,
    encode_sync_update,
    write_var_bytes,
)

log = logging.getLogger(__name__)

#: How long leaving a session may spend sending what is still queued.
FLUSH_TIMEOUT = 5.0


class YjsClient:
    """A doc kept in sync with one room, with its awareness."""

    def __init__(self, doc: Doc, websocket: Any, awareness: Awareness | None = None) -> None:
        self.doc = doc
        self.websocket = websocket
        if awareness is None:
            awareness = Awareness(doc)
            awareness.set_local_state(None)  # nothing to show until the caller sets a state
        self.awareness = awareness
        self.closed = anyio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: What this side sent in its close frame, if it sent one (a keepalive timeout
        #: is ``(1011, "keepalive ping timeout")`` with no close received).
        self.close_sent: tuple[int, str] | None = None
        self._synced = anyio.Event()
        self._step1_sent = 0
        self._step2_received = 0
        self._step2_arrived = anyio.Event()
        self._outbox: deque[bytes] = deque()
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._applying_remote = False
        self._doc_subscription = doc.observe(self._local_change)
        self._awareness_subscription = self.awareness.observe(self._local_awareness)

    async def synced(self) -> None:
        """Wait until the server's sync step2 has been applied (bound it with a timeout)."""
        await self._synced.wait()

    @property
    def remote_states(self) -> dict[int, dict[str, Any]]:
        """Awareness states of other clients, by client id."""
        return {
            cid: state
            for cid, state in self.awareness.states.items()
            if cid != self.awareness.client_id and state is not None
        }

    async def roundtrip(self) -> bool:
        """Send a sync step1 and wait for the server's step2 answering it.

        The server handles a connection's messages in order, so once the answer is
        here every update sent before has been applied by the server (and, on
        crdt-sync, queued for its store). Bound it with a timeout.

        Returns:
            ``False`` if the session closed first.
        """
        if self.closed.is_set():
            return False
        self._send_step1()
        wanted = self._step1_sent
        while self._step2_received < wanted:
            if self.closed.is_set():
                return False
            await self._step2_arrived.wait()  # also set when the session ends
        return True

    async def send_awareness(self, entries: list[AwarenessEntry]) -> None:
        """Send raw awareness entries (tests, bridges)."""
        self._send(encode_awareness_update(entries))

    async def flush(self) -> None:
        """Wait until everything queued so far was handed to the socket (or it closed)."""
        await self._idle.wait()

    # -- internals ---------------------------------------------------------------

    def _send_step1(self) -> None:
        if self.closed.is_set():
            return
        self._step1_sent += 1
        self._send(encode_sync_step1(self.doc.get_state()))

    def _send(self, message: bytes) -> None:
        if self.closed.is_set():
            return
        self._outbox.append(message)
        if self._idle.is_set():  # waiters on the current event stay valid until it is set
            self._idle = anyio.Event()
        self._wake.set()

    def _local_change(self, event: Any) -> None:
        if not self._applying_remote:
            self._send(encode_sync_update(event.update))

    def _local_awareness(self, topic: str, changes: tuple[dict[str, Any], Any]) -> None:
        change, origin = changes
        if topic != "update" or origin != "local":
            return
        ids = change["added"] + change["updated"] + change["removed"]
        self._send(b"\x01" + write_var_bytes(self.awareness.encode_awareness_update(ids)))

    def _apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying_remote = False

    async def _receive(self) -> None:
        try:
            async for frame in self.websocket:
                if isinstance(frame, str):
                    continue
                match decode_message(frame):
                    case SyncStep1(state_vector):
                        self._send(encode_sync_step2(self.doc.get_update(state_vector)))
                    case SyncStep2(update):
                        self._apply_remote(update)
                        self._synced.set()
                        self._step2_received += 1
                        self._step2_arrived.set()
                        self._step2_arrived = anyio.Event()
                    case SyncUpdate(update):
                        self._apply_remote(update)
                    case AwarenessUpdate():
                        payload = Reader(frame[1:]).var_bytes()
                        self.awareness.apply_awareness_update(payload, "remote")
                    case _:
                        pass  # auth, query-awareness: nothing a client must answer
        except websockets.ConnectionClosed:
            pass
        finally:
            self._ended()

    async def _send_loop(self) -> None:
        try:
            while True:
                while self._outbox:
                    await self.websocket.send(self._outbox.popleft())
                self._idle.set()
                self._wake = anyio.Event()
                if not self._outbox:
                    await self._wake.wait()
        except websockets.ConnectionClosed:
            self._ended()

    def _ended(self) -> None:
        if self.closed.is_set():
            return
        self.close_code = self.websocket.close_code  # None while the socket is open
        self.close_reason = self.websocket.close_reason
        protocol = getattr(self.websocket, "protocol", None)
        sent = getattr(protocol, "close_sent", None)
        if sent is not None:
            self.close_sent = (sent.code, sent.reason)
        self._outbox.clear()
        self._idle.set()
        self.closed.set()
        self._step2_arrived.set()

    def _detach(self) -> None:
        self.doc.unobserve(self._doc_subscription)
        self.awareness.unobserve(self._awareness_subscription)


@asynccontextmanager
async def connect(
    server_url: str,
    doc_name: str,
    doc: Doc | None = None,
    *,
    token: str | None = None,
    awareness: Awareness | None = None,
    **ws_options: Any,
) -> AsyncIterator[YjsClient]:
    """Connect a ``Doc`` to ``server_url/doc_name`` (the name is URL-encoded).

    Leaving the context sends what is still queued, announces the removal of the
    local awareness state (unless the caller passed its own ``awareness``), and
    closes the socket.

    Args:
        token: Sent as ``Authorization: Bearer`` (never in the URL, so no log shows it).
        awareness: An awareness of ``doc`` that outlives this session (a reconnecting
            client's); its local state is left as it is on exit.
    """
    doc = doc if doc is not None else Doc()
    url = server_url.rstrip("/") + "/" + quote(doc_name, safe="/")
    ws_options.setdefault("max_size", None)
    if token is not None:
        headers = dict(ws_options.pop("additional_headers", None) or {})
        headers["Authorization"] = f"Bearer {token}"
        ws_options["additional_headers"] = headers
    websocket: Any = None
    try:
        async with websockets.connect(url, **ws_options) as websocket:
            owns_awareness = awareness is None
            client = YjsClient(doc, websocket, awareness)
            try:
                client._send_step1()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client._receive)
                    tg.start_soon(client._send_loop)
                    try:
                        yield client
                    finally:
                        with anyio.CancelScope(shield=True), anyio.move_on_after(FLUSH_TIMEOUT):
                            if owns_awareness and client.awareness.get_local_state() is not None:
                                client.awareness.set_local_state(None)
                            await client.flush()
                        tg.cancel_scope.cancel()
            finally:
                client._detach()
    finally:
        # websockets leaves the socket open when the close handshake is cancelled (the
        # caller's deadline, a task group ending): it would stay open until the peer
        # closes it, or be collected unclosed. A closed session never keeps a socket.
        transport = getattr(websocket, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()
