"""The real server's own log lines (uvicorn's handshake line included) hold no token."""

from __future__ import annotations

import anyio
import pytest
import websockets

from tests.server_process import ServerProcess

pytestmark = pytest.mark.anyio

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


async def test_websocket_handshake_log_line_has_no_token(server: ServerProcess) -> None:
    url = f"{server.ws_url}/notes/redact?token={JWT}"
    with anyio.fail_after(10):
        async with websockets.connect(url) as ws:
            await ws.recv()  # the server's sync step 1: the connection is up
        async with websockets.connect(
            f"{server.url.replace('http', 'ws', 1)}/sync/v1/ws?token=opaque-secret-1"
        ) as ws:
            await ws.send('{"type":"ping"}')
            await ws.recv()
    server.stop()
    log = server.log()
    assert '"WebSocket /yjs/notes/redact?token=[redacted]" [accepted]' in log
    assert "/sync/v1/ws?token=[redacted]" in log
    assert JWT not in log
    assert "opaque-secret-1" not in log
