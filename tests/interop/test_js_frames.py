"""A y-websocket editor and frame-feed clients on the same record, live both ways.

The JS side (``tests/interop/js/record_editor.mjs``) types into the record's
``Y.Text`` body; a frame client on ``/sync/v1/ws`` receives that as a few coalesced
``u`` frames carrying the text. The frame client then announces itself as a viewer
(the editor sees it in its awareness) and sets ``fields.status`` with an HTTP
mutation, which the editor's ``Y.Map`` shows live.
"""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
import websockets

pytestmark = [pytest.mark.interop, pytest.mark.anyio]


async def test_js_typing_reaches_frame_clients_and_mutations_reach_the_editor(
    server_factory, node
) -> None:
    server = server_factory("--frame-coalesce-ms", "200", "--delta-min-interval-ms", "0")
    typed = "hello from a y-websocket editor"
    feed_url = server.url.replace("http://", "ws://", 1) + "/sync/v1/ws?since=0"
    async with websockets.connect(feed_url) as ws:
        editor = node.start(
            "record_editor.mjs",
            server.ws_url,
            "task/42",
            {"type": typed, "delay_ms": 10, "expect_status": "done"},
        )
        await anyio.to_thread.run_sync(editor.expect, "typed", 15.0)
        frames: list[dict] = []
        with anyio.fail_after(10):
            while not frames or frames[-1]["p"].get("body") != typed:
                message = json.loads(await ws.recv())
                if isinstance(message, list):
                    frames += message
        assert frames[0]["op"] == "i" and (frames[0]["t"], frames[0]["id"]) == ("task", "42")
        assert all(f["op"] == "u" and set(f["p"]) == {"body"} for f in frames[1:])
        # ~310 ms of typing in 200 ms windows: a handful of frames, not one per key.
        assert len(frames) <= 6, [f["p"] for f in frames]
        bodies = [f["p"]["body"] for f in frames]
        assert all(typed.startswith(b) for b in bodies)

        view = {"type": "view", "t": "task", "id": "42", "state": {"user": {"name": "bot"}}}
        await ws.send(json.dumps(view))
        saw_viewer = await anyio.to_thread.run_sync(editor.expect, "saw_viewer", 10.0)
        assert saw_viewer["state"]["user"] == {"name": "bot"}

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            response = await http.post(
                "/sync/v1/mutations",
                json={"mutations": [{"t": "task", "id": "42", "op": "u", "p": {"status": "done"}}]},
            )
            assert response.status_code == 200
            [result] = response.json()["results"]
            assert result["status"] == 200 and result["sid"] > frames[-1]["sid"]
        saw = await anyio.to_thread.run_sync(editor.expect, "saw_status", 10.0)
        assert saw["fields"] == {"status": "done"} and saw["closes"] == 0
        with anyio.fail_after(10):
            while True:
                message = json.loads(await ws.recv())
                if isinstance(message, list) and message[-1]["sid"] == result["sid"]:
                    assert message[-1]["p"] == {"status": "done"}
                    break
    done = await anyio.to_thread.run_sync(editor.finish)
    assert "left" in done
