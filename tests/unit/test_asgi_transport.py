"""WsBinaryTransport on uvicorn's sans-I/O protocol: direct writes, and the handshake
objects it lets go of once the socket is open."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.protocol import State

from crdt_sync.asgi import WsBinaryTransport, ws_frame


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class _Conn:
    extensions: list[Any] = []
    state = State.OPEN


class WebSocketsSansIOProtocol:  # the name direct_writer recognises
    def __init__(self, handshake_complete: bool) -> None:
        self.transport = _Transport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False
        self.conn = _Conn()
        self.handshake_complete = handshake_complete
        self.request: object | None = object()
        self.response: object | None = object()

    async def send(self, message: dict[str, Any]) -> None:
        raise AssertionError("the direct path should have written")


def test_an_open_socket_is_written_directly_and_drops_the_handshake() -> None:
    protocol = WebSocketsSansIOProtocol(handshake_complete=True)
    transport = WsBinaryTransport(protocol.send)
    assert protocol.request is None and protocol.response is None
    assert transport.write_now(b"\x00\x02\x01\x00")
    assert protocol.transport.written == [ws_frame(0x2, b"\x00\x02\x01\x00")]


def test_before_the_accept_the_handshake_is_kept() -> None:
    protocol = WebSocketsSansIOProtocol(handshake_complete=False)
    WsBinaryTransport(protocol.send)
    assert protocol.request is not None and protocol.response is not None
