"""An npm y-websocket editor and the Python client (``crdt_sync.client``) on one room.

The JS side is ``tests/interop/js/js_python.mjs``; this test plays the Python side
in between its steps.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pycrdt import Map, Text

from crdt_sync.client import connect

pytestmark = [pytest.mark.interop, pytest.mark.anyio]


def content(doc: Any) -> dict[str, Any]:
    return {"body": str(doc.get("body", type=Text)), "fields": doc.get("fields", type=Map).to_py()}


async def wait_until(predicate: Any, label: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (on the event loop, where the client applies updates)."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"waited {timeout} s for {label}")


async def test_js_and_python_clients_converge(server, node) -> None:
    room = "notes/js-python"
    js = node.start("js_python.mjs", server.ws_url, room)
    wrote = await anyio.to_thread.run_sync(js.expect, "wrote")
    assert wrote == {"body": "js says hi", "fields": {"from_js": "yes"}}

    async with connect(server.ws_url, room) as client:
        with anyio.fail_after(10):
            await client.synced()
        # JS wrote before Python joined: it arrives with the initial sync.
        await wait_until(lambda: content(client.doc) == wrote, "Python to read JS's edits")
        await wait_until(
            lambda: {"user": {"name": "js"}} in client.remote_states.values(),
            "Python to see JS's awareness state",
        )

        body = client.doc.get("body", type=Text)
        fields = client.doc.get("fields", type=Map)
        with client.doc.transaction():
            body += " py says hi"
            fields["from_py"] = "yes"
        client.awareness.set_local_state({"user": {"name": "py"}})

        saw = await anyio.to_thread.run_sync(js.expect, "saw_python")
        assert saw["body"] == "js says hi py says hi"
        assert saw["fields"] == {"from_js": "yes", "from_py": "yes"}
        assert "py" in saw["users"].values()

        # JS answers live, while both are connected.
        final = await anyio.to_thread.run_sync(js.expect, "final")
        expected = {
            "body": "js says hi py says hi",
            "fields": {"from_js": "yes", "from_py": "yes", "reply": "js saw py"},
        }
        assert {"body": final["body"], "fields": final["fields"]} == expected
        assert final["closes"] == 0
        await wait_until(lambda: content(client.doc) == expected, "Python to read JS's reply")

        await anyio.to_thread.run_sync(js.finish)
        # The JS provider announced its departure; the server relayed it.
        await wait_until(
            lambda: {"user": {"name": "js"}} not in client.remote_states.values(),
            "JS's awareness state to be removed after it left",
        )
