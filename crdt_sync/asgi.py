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

Scope = dict[str, Any]


def _close_reason(reason: str) -> str:
    # RFC 6455 caps the reason at 123 bytes of UTF-8.
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore")


class WsBinaryTransport:
    """``rooms.Transport``: each queued message is one binary WebSocket frame."""

    __slots__ = ("_send",)

    def __init__(self, send: Any) -> None:
        self._send = send

    async def send(self, message: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": message})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": _close_reason(reason)})


class WsTextTransport(WsBinaryTransport):
    """``rooms.Transport``: each queued message (UTF-8) is one text WebSocket frame."""

    __slots__ = ()

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
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


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
