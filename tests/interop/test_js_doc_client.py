"""The Python DocClient and an npm y-websocket client on one room: edits both ways,
awareness both ways, and convergence of what each typed while the server was down.

The JS side is ``tests/interop/js/doc_client_peer.mjs``, driven line by line.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import DocClient
from crdt_sync.client.backoff import Backoff
from tests.integration.test_doc_client import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.anyio]


class Peer:
    """Commands to the JS peer; each answer awaited off the event loop."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.count = 0

    async def do(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.count += 1
        event = f"{cmd}-{self.count}"
        self.script.send(json.dumps({"cmd": cmd, "as": event, **fields}))
        return await anyio.to_thread.run_sync(self.script.expect, event, 40.0)


async def test_doc_client_converges_with_y_websocket(server_factory, node) -> None:
    room = "note/js-doc-client"
    server = server_factory()
    port = urlsplit(server.url).port
    script = node.start("doc_client_peer.mjs", server.ws_url, room, {"name": "js"})
    js = Peer(script)
    await anyio.to_thread.run_sync(script.expect, "ready", 30.0)

    backoff = Backoff(base=0.2, cap=1.0, stable_after=1.0)
    async with DocClient(server.url, room, backoff=backoff) as client:
        with anyio.fail_after(20):
            await client.synced()
        body = client.doc.get("body", type=Text)
        await wait_until(
            lambda: {"user": {"name": "js"}} in client.presence.values(), "JS's awareness"
        )
        client.set_presence({"user": {"name": "py"}})

        # Python -> JS, JS -> Python, while both are online.
        body += "py1 "
        await js.do("wait_body", body="py1 ")
        await js.do("append", text="js1 ")
        await wait_until(lambda: str(body) == "py1 js1 ", "Python to get JS's edit")
        seen = await js.do("wait_user", name="py")
        assert seen["users"] == ["py"]

        # The server goes away; each side types while it is down.
        server.stop()
        with anyio.fail_after(20):
            await client.wait_for_state("offline")
        await js.do("wait_offline")
        assert client.presence == {}  # remote states are not kept across connections
        body += "py-offline "
        await js.do("append", text="js-offline ")

        tried = client.attempts
        await wait_until(lambda: client.attempts >= tried + 2, "two refused reconnects")
        restarted = await anyio.to_thread.run_sync(
            lambda: server_factory("--port", str(port), db=server.db)
        )
        with anyio.fail_after(30):
            await client.synced()
        await js.do("wait_synced")
        await wait_until(
            lambda: "js-offline " in str(body), "Python to get JS's offline edit", timeout=30
        )
        merged = str(body)
        final = await js.do("wait_body", body=merged)
        assert final["body"] == merged
        for part in ("py1 ", "js1 ", "py-offline ", "js-offline "):
            assert merged.count(part) == 1, merged
        assert merged.startswith("py1 js1 ")
        with anyio.fail_after(20):
            await client.flush()
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as http:
            stored = (await http.get("/docs/" + room)).json()["content"]["body"]
        assert stored == merged

        # Awareness is back both ways on the new connections.
        await wait_until(
            lambda: {"user": {"name": "js"}} in client.presence.values(),
            "JS's awareness after the restart",
        )
        await js.do("wait_user", name="py")

        # Live again, both ways.
        body += "py2"
        await js.do("wait_body", body=merged + "py2")
        await js.do("append", text=" js2")
        await wait_until(lambda: str(body) == merged + "py2 js2", "JS's last edit")

        await js.do("leave")
        await wait_until(lambda: not client.presence, "JS's awareness removed when it left")
    await anyio.to_thread.run_sync(script.finish)
