"""The value model against a real server: what a doc may hold that JSON cannot.

A Yjs editor (or ``POST /docs/{doc}/update``) can put NaN, infinities or binary in a
record; an awareness state or a request can carry a lone surrogate. None of it may
stop the feed, presence or the store, before or after a restart (issue 10, findings
1-3): the record is framed with those values as ``null`` / U+FFFD, every other
record goes on, and ``/healthz`` tells the truth.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Map

from crdt_sync.client import connect
from rooms.codec import AwarenessEntry, encode_awareness_update
from tests.integration.test_sync_feed import FAST, FrameSocket, all_frames, feed_url, mutate

pytestmark = pytest.mark.anyio


def poison_update() -> bytes:
    """A record doc whose ``fields`` hold NaN, -Infinity and binary next to a plain value."""
    doc = Doc()
    fields = doc.get("fields", type=Map)
    fields["n"] = float("nan")
    fields["low"] = float("-inf")
    fields["raw"] = b"\x00\x01"
    fields["title"] = "still here"
    return doc.get_update()


async def healthy(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    return response.json()


async def frames_of(http: httpx.AsyncClient, name: str, count: int) -> list[dict]:
    """Wait (bounded) until ``count`` frames of record ``name`` are in the log."""
    t, record_id = name.split("/", 1)
    with anyio.fail_after(10):
        while True:
            frames = [f for f in await all_frames(http) if (f["t"], f["id"]) == (t, record_id)]
            if len(frames) >= count:
                return frames
            await anyio.sleep(0.05)


async def test_nan_in_a_record_does_not_stop_other_records_frames(server_factory) -> None:
    server = server_factory(*FAST)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        websockets.connect(feed_url(server, since=0)) as ws,
    ):
        feed = FrameSocket(ws)
        posted = await http.post("/docs/poison/1/update", content=poison_update())
        assert posted.status_code == 200, posted.text
        (frame,) = await frames_of(http, "poison/1", 1)
        assert frame["op"] == "i"
        assert frame["p"] == {"n": None, "low": None, "raw": None, "title": "still here"}
        # Other records are still written, framed and delivered live.
        (result,) = await mutate(http, {"t": "other", "id": "1", "op": "i", "p": {"a": 1}})
        assert result["status"] == 201, result
        frames = await feed.frames_until(result["sid"])
        assert [(f["t"], f["id"]) for f in frames] == [("poison", "1"), ("other", "1")]
        assert frames[0]["p"]["n"] is None
        # The CRDT is untouched: editors still get NaN; the doc reads as JSON.
        async with connect(server.ws_url, "poison/1") as editor:
            with anyio.fail_after(10):
                await editor.synced()
            got = editor.doc.get("fields", type=Map)["n"]
            assert got != got  # NaN
        doc = await http.get("/docs/poison/1")
        assert doc.status_code == 200, doc.text
        assert doc.json()["content"]["fields"]["n"] is None
        # A Yjs edit of the poisoned record is framed too.
        async with connect(server.ws_url, "poison/1") as editor:
            with anyio.fail_after(10):
                await editor.synced()
            editor.doc.get("fields", type=Map)["title"] = "edited"
            await editor.flush()
            frames = await frames_of(http, "poison/1", 2)
            assert frames[1]["p"] == {"title": "edited"}
            # And so is Infinity sent by an editor.
            editor.doc.get("fields", type=Map)["high"] = float("inf")
            await editor.flush()
            frames = await frames_of(http, "poison/1", 3)
            assert frames[2]["p"] == {"high": None}
        assert "problems" not in await healthy(http)
        metrics = (await http.get("/metrics")).text
        assert 'crdt_sync_values_conformed_total{reason="non_finite"} 3.0' in metrics
        assert 'crdt_sync_values_conformed_total{reason="not_json"} 1.0' in metrics
    server.stop()
    assert "value outside the value model (non_finite), projected as null" in server.log()


async def test_restart_with_poison_value_stored_recovers(server_factory, tmp_path) -> None:
    # A long coalescing window and kill -9: the doc is stored, its frame is not, so the
    # start-up recovery pass has to project the poisoned doc.
    first = server_factory("--frame-coalesce-ms", "60000", "--delta-min-interval-ms", "0")
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
        posted = await http.post("/docs/poison/2/update", content=poison_update())
        assert posted.status_code == 200, posted.text
        assert (await all_frames(http)) == []
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)

    again = server_factory(*FAST, db=first.db)
    async with httpx.AsyncClient(base_url=again.url, timeout=30) as http:
        (frame,) = await frames_of(http, "poison/2", 1)
        assert frame["p"]["n"] is None and frame["p"]["title"] == "still here"
        (result,) = await mutate(http, {"t": "other", "id": "2", "op": "i", "p": {"a": 1}})
        assert result["status"] == 201, result
        await frames_of(http, "other/2", 1)
        await healthy(http)
        async with connect(again.ws_url, "notes/after") as editor:
            with anyio.fail_after(10):
                await editor.synced()


async def test_lone_surrogate_awareness_does_not_stop_presence(server_factory) -> None:
    server = server_factory(*FAST)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        websockets.connect(feed_url(server, presence="all")) as ws,
        websockets.connect(server.ws_url + "/doc/lone") as attacker,
        connect(server.ws_url, "doc/lone") as editor,
    ):
        feed = FrameSocket(ws)
        await attacker.recv()
        with anyio.fail_after(10):
            await editor.synced()
        # Valid UTF-8 on the wire, valid JSON; it decodes to a lone surrogate.
        state = '{"user":{"name":"\\ud800"},"bad":NaN}'
        await attacker.send(encode_awareness_update([AwarenessEntry(77, 1, state)]))

        def present(sub: FrameSocket) -> list[dict]:
            events = [e for e in sub.events if e["type"] == "presence"]
            return events[-1]["present"] if events else []

        # The input contract refuses the state at the codec (1007): it never reaches the
        # room. (Presence also conforms what does reach it: see tests/unit/test_value_model.)
        with anyio.fail_after(10):
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await attacker.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        # Presence goes on for everybody.
        editor.awareness.set_local_state({"user": {"name": "ed"}, "cursor": 5})
        await feed.pump(lambda s: any(p["state"].get("cursor") == 5 for p in present(s)))
        (result,) = await mutate(http, {"t": "doc", "id": "other", "op": "i", "p": {"a": 1}})
        assert result["status"] == 201, result
        await healthy(http)


async def test_lone_surrogate_client_id_is_refused_and_the_feed_stays_readable(
    server_factory,
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        (first,) = await mutate(http, {"t": "s", "id": "1", "op": "i", "p": {"a": 1}})
        insert = {"t": "s", "id": "2", "op": "i", "p": {"a": 1}}
        # json.dumps escapes the lone surrogate: valid UTF-8 that decodes to one.
        body = json.dumps({"client_id": "\ud800", "mutations": [insert]})
        assert "\\ud800" in body
        response = await http.post(
            "/sync/v1/mutations", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code in (200, 400), response.text
        if response.status_code == 200:  # refused per mutation, before the doc changed
            (refused,) = response.json()["results"]
            assert refused["status"] == 400, refused
        (later,) = await mutate(http, {"t": "s", "id": "3", "op": "i", "p": {"a": 1}})
        assert later["status"] == 201
        page = await http.get("/sync/v1/delta", params={"since": 0})
        assert page.status_code == 200, page.text
        assert [(f["id"], f["ctx"]) for f in page.json()["frames"]] == [
            ("1", {"client_tx_id": None}),
            ("3", {"client_tx_id": None}),
        ]
        assert (await http.get("/docs/s/2")).status_code == 404  # nothing was applied
        # WS catch-up from before it works too.
        async with websockets.connect(feed_url(server, since=first["sid"] - 1)) as ws:
            frames = await FrameSocket(ws).frames_until(later["sid"])
            assert [f["id"] for f in frames] == ["1", "3"]
        await healthy(http)


async def test_viewer_state_cannot_override_its_server_set_identity(server_factory) -> None:
    server = server_factory(*FAST)
    async with (
        connect(server.ws_url, "doc/who") as editor,
        websockets.connect(feed_url(server)) as ws,
    ):
        with anyio.fail_after(10):
            await editor.synced()
        state = {"user": {"name": "carol", "color": "red"}, "actor": "admin", "viewer": False}
        await ws.send(json.dumps({"type": "view", "t": "doc", "id": "who", "state": state}))
        feed = FrameSocket(ws)
        await feed.pump(lambda s: any(e["type"] == "presence" for e in s.events))
        with anyio.fail_after(10):
            while not any(s.get("viewer") for s in editor.remote_states.values()):
                await anyio.sleep(0.01)
        (viewer,) = [s for s in editor.remote_states.values() if s.get("viewer")]
        # Auth is off: the actor is "anonymous" (server-set); the display name is the
        # viewer's own, as for any Yjs editor.
        assert viewer == {
            "user": {"name": "carol", "color": "red"},
            "actor": "anonymous",
            "viewer": True,
        }
