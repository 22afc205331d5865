"""crdt_sync.client.connect never leaves a socket open behind a closed session, even
when the close handshake is cancelled (websockets alone would leave it to the peer, or
to the garbage collector)."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import anyio
import pytest

from crdt_sync.client import connect

pytestmark = pytest.mark.anyio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def test_a_cancelled_close_handshake_still_closes_the_socket() -> None:
    peers: list[asyncio.StreamWriter] = []

    async def mute_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Completes the WebSocket handshake, then never answers nor closes."""
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
        peers.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(mute_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sessions = []
        with anyio.move_on_after(1.0) as scope:  # websockets would wait 10 s for the close
            async with connect(f"ws://127.0.0.1:{port}", "doc", close_timeout=10) as client:
                sessions.append(client)
        assert scope.cancelled_caught  # the close handshake was cut short
        [client] = sessions
        assert client.websocket.transport.is_closing()
    finally:
        for writer in peers:
            writer.close()
        server.close()
        await server.wait_closed()
