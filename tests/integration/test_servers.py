"""Every supported ``--server``, on either ``--loop``, runs the same app the same way:
sync, close codes, the HTTP API and a graceful SIGTERM. (The rest of the suite runs on
the defaults, uvicorn on uvloop.)
granian is left out: it is experimental (README, "Choosing the ASGI server")."""

from __future__ import annotations

import signal

import anyio
import httpx
import pytest
import websockets
from pycrdt import Text

from crdt_sync.client import connect
from tests.integration.test_yjs_server import closed_with

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("asgi_server", ["uvicorn", "hypercorn"])
async def test_each_server_syncs_refuses_and_stops_gracefully(
    server_factory, asgi_server, loop
) -> None:
    server = server_factory("--server", asgi_server, "--loop", loop)
    assert f"server: {asgi_server}, loop: {loop})" in server.ready_line
    async with connect(server.ws_url, "srv/1") as a, connect(server.ws_url, "srv/1") as b:
        with anyio.fail_after(10):
            await a.synced()
            await b.synced()
        a.doc["body"] = text = Text()
        text += f"hello over {asgi_server}"
        received = b.doc.get("body", type=Text)
        with anyio.fail_after(10):
            while str(received) != f"hello over {asgi_server}":
                await anyio.sleep(0.01)
    async with websockets.connect(server.ws_url + "/srv/2") as ws:
        await ws.send("text is not the protocol")
        assert (await closed_with(ws))[0] == 1003
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/docs/srv/1")).json()["content"]["body"].startswith("hello")
        response = await http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "srv", "id": "1", "op": "u", "p": {"s": asgi_server}}]},
        )
        assert response.json()["results"][0]["status"] == 200
        bad = await http.get("/yjs-nothing-here")
        assert bad.status_code == 404 and bad.json()["error"] == "not_found"
    async with websockets.connect(server.ws_url + "/srv/3") as ws:
        await ws.recv()  # synced: the room is open
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert (await closed_with(ws))[0] == 1001
    with anyio.fail_after(15):
        while server.proc.poll() is None:
            await anyio.sleep(0.02)
    assert server.proc.returncode == 0, server.log()[-2000:]


def test_the_default_loop_is_uvloop(server_factory) -> None:
    server = server_factory()
    assert "server: uvicorn, loop: uvloop)" in server.ready_line
