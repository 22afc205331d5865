"""An npm y-websocket editor sees a document change made over HTTP, live.

The JS side is ``tests/interop/js/watch_doc.mjs``: connected to room R, it waits for
each expected content in turn. The Python side writes each step with
``POST /docs/R/update`` (binary Yjs updates made with pycrdt) once the editor is
connected, and checks that the editor got it on the same socket, in bounded time.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from pycrdt import Doc, Map, Text

pytestmark = [pytest.mark.interop, pytest.mark.anyio]


async def test_http_post_reaches_a_connected_js_editor_live(server, node) -> None:
    room = "notes/http-live"
    steps = [
        {"body": "written over HTTP", "fields": {"source": "http", "n": 1}},
        {"body": "written over HTTP, then edited", "fields": {"source": "http", "n": 2}},
        {"body": "HTTP, then edited", "fields": {"n": 2}},
    ]
    watcher = node.start("watch_doc.mjs", server.ws_url, room, {"expect": steps})
    synced = await anyio.to_thread.run_sync(watcher.expect, "synced")
    assert synced == {"body": "", "fields": {}}

    writer = Doc()
    writer["body"] = body = Text()
    writer["fields"] = fields = Map()
    async with httpx.AsyncClient(base_url=server.url) as http:
        for i, step in enumerate(steps):
            before = writer.get_state()
            with writer.transaction():
                if i == 0:
                    body += "written over HTTP"
                    fields["source"] = "http"
                    fields["n"] = 1
                elif i == 1:
                    body += ", then edited"
                    fields["n"] = 2
                else:
                    del body[0 : len("written over ")]
                    del fields["source"]
            assert {"body": str(body), "fields": fields.to_py()} == step
            # Only what changed since the previous POST (a delta, as an editor would send).
            response = await http.post(f"/docs/{room}/update", content=writer.get_update(before))
            assert response.status_code == 200, response.text
            assert response.json()["applied"] is True
            saw = await anyio.to_thread.run_sync(watcher.expect, f"saw_{i}", 10.0)
            assert {"body": saw["body"], "fields": saw["fields"]} == step
            assert saw["connected"] is True and saw["closes"] == 0, saw

        # The editor and the server agree on what the doc is.
        got = (await http.get(f"/docs/{room}")).json()["content"]
        assert got == steps[-1]
    result = await anyio.to_thread.run_sync(watcher.finish)
    assert "left" in result
