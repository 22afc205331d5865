"""Raw ASGI plumbing shared by the WebSocket and streaming endpoints.

The hot endpoints (Yjs, the frame feed, SSE) are raw ASGI apps: no per-message
Starlette wrapper objects. What they share lives here: the ``rooms.Transport``
adapters, the peer address, draining a closed WebSocket, JSON error responses.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import anyio

from rooms.connection import CLOSE_TIMEOUT

from .errors import json_error_body
from .uvicorn_ws import slim

Scope = dict[str, Any]


def _close_reason(reason: str) -> str:
    # RFC 6455 caps the reason at 123 bytes of UTF-8.
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented server-to-client WebSocket frame (RFC 6455 5.2: FIN set, not
    masked): the same bytes for every receiver of a broadcast."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


class _FrameCache:
    """The frame of the last message written: a broadcast writes the same ``bytes``
    object to every receiver in a row, so it is framed once."""

    __slots__ = ("frame", "message", "opcode")

    def __init__(self) -> None:
        self.message: bytes | None = None
        self.opcode = 0
        self.frame = b""

    def get(self, opcode: int, message: bytes) -> bytes:
        if message is not self.message or opcode != self.opcode:
            self.frame = ws_frame(opcode, message)
            self.message = message  # held, so its id cannot be reused meanwhile
            self.opcode = opcode
        return self.frame


_FRAMES = _FrameCache()


def uvicorn_protocol(send: Any) -> Any | None:
    """The uvicorn sans-I/O WebSocket protocol behind ``send``, if that is what it is."""
    protocol = getattr(send, "__self__", None)
    if type(protocol).__name__ != "WebSocketsSansIOProtocol":
        return None
    return protocol


def direct_writer(protocol: Any) -> Any | None:
    """``protocol`` (see :func:`uvicorn_protocol`) if its socket may be written
    directly: no extension negotiated (we turn permessage-deflate off), so a data frame
    on the wire is just header + payload.

    Any other server (hypercorn, granian, a test double) gets ``None``: the ASGI path.
    """
    if protocol is None:
        return None
    if not all(hasattr(protocol, a) for a in ("transport", "writable", "close_sent", "conn")):
        return None
    if getattr(protocol.conn, "extensions", None):
        return None
    return protocol


class WsBinaryTransport:
    """``rooms.Transport``: each message is one binary WebSocket frame.

    On uvicorn (see :func:`direct_writer`) :meth:`write_now` puts the pre-framed
    message straight on the socket: per receiver that is a buffer append and a
    ``send()``, where the ASGI path builds an event, a frame object and its bytes
    again for every receiver of the same broadcast. It declines (and the ASGI
    ``send`` takes over, which waits) when the socket is backed up or closing.
    """

    __slots__ = ("_direct", "_open", "_send")
    OPCODE = 0x2

    def __init__(self, send: Any) -> None:
        self._send = send
        protocol = uvicorn_protocol(send)
        if protocol is not None:
            slim(protocol)
        self._direct = direct_writer(protocol)
        self._open: Any = None
        if self._direct is not None:
            from websockets.protocol import State

            self._open = State.OPEN

    def write_now(self, message: bytes) -> bool:
        """Write ``message`` without suspending if the socket takes it; ``False`` if not."""
        protocol = self._direct
        if protocol is None or protocol.close_sent or not protocol.writable.is_set():
            return False
        transport = protocol.transport
        # Past a close frame either way (ours, or the peer's that websockets answered),
        # no data frame may follow: the ASGI path knows how to refuse.
        if protocol.conn.state is not self._open or transport.is_closing():
            return False
        transport.write(_FRAMES.get(self.OPCODE, message))
        return True

    async def send(self, message: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": message})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": _close_reason(reason)})


class WsTextTransport(WsBinaryTransport):
    """``rooms.Transport``: each message (UTF-8) is one text WebSocket frame."""

    __slots__ = ()
    OPCODE = 0x1

    async def send(self, message: bytes) -> None:
        await self._send({"type": "websocket.send", "text": message.decode("utf-8")})


class AsgiApp:
    """Wraps a bound method so that Starlette routes call it as a raw ASGI app
    (a plain method would be wrapped as a request handler)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self._fn(scope, receive, send)


def peer(scope: Scope) -> str:
    """``host:port`` of the client, for log lines."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def client_ip(scope: Scope) -> str | None:
    """The client's address (what limits count under while anonymous)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def route_path(scope: Scope) -> str:
    """The request path below the app's mount point (``root_path`` taken off)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def query_params(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(raw, keep_blank_values=True))


async def drain_websocket(receive: Any) -> None:
    """After the server closed: read and drop what the client still sends until it
    disconnects (bounded). ASGI servers queue a few messages per connection and
    stop reading the socket when that queue is full, so an app that returns
    without draining can leave a chatty client's connection, and shutdown, hanging.
    """
    with anyio.move_on_after(CLOSE_TIMEOUT):
        while (await receive())["type"] != "websocket.disconnect":
            pass


def json_body(error: str, detail: str, extra: dict[str, Any] | None = None) -> bytes:
    if not extra:
        return json_error_body(error, detail)
    return json.dumps({"error": error, "detail": detail, **extra}).encode("utf-8")


async def send_json_response(
    send: Any, status: int, body: bytes, *, prefix: str = "http.response"
) -> None:
    """A whole JSON response; ``prefix="websocket.http.response"`` refuses a handshake."""
    await send(
        {
            "type": f"{prefix}.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": f"{prefix}.body", "body": body})


async def deny_handshake(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    reason: str,
    *,
    fallback_code: int,
) -> None:
    """Refuse a WebSocket handshake (its ``websocket.connect`` already received): an
    HTTP response where the server offers ``websocket.http.response``, else a close
    with ``fallback_code``.

    uvicorn's sans-I/O protocol counts the handshake complete only once the socket is
    gone (``connection_lost``): an app that returns right after the response makes it
    log "ASGI callable returned without completing handshake" (an ERROR line per
    refusal). So there we read until it says so: the first ``websocket.disconnect`` is
    queued with the response, the second when the socket is closed (bounded).
    """
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": fallback_code, "reason": reason})
        return
    prefix = "websocket.http.response"
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})
    protocol = uvicorn_protocol(send)
    if protocol is not None:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            while not getattr(protocol, "handshake_complete", True):
                await receive()
