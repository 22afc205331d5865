"""``GET /admin/inspect`` against a real server: rooms, frames, store figures, scope."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import connect
from tests.integration.auth_support import SECRET, token

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")


async def inspect(client: httpx.AsyncClient, **params: Any) -> dict:
    response = await client.get("/admin/inspect", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def test_rooms_frames_and_store_figures(server_factory: Any) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        async with connect(server.ws_url, "note/inspected") as editor:
            await editor.synced()
            editor.doc["body"] = text = Text()
            text += "x" * 500
            editor.awareness.set_local_state({"user": {"name": "ann"}})
            await editor.flush()
            mutation = {"t": "task", "id": "i-1", "op": "i", "p": {"title": "seen"}}
            response = await http.post("/sync/v1/mutations", json={"mutations": [mutation]})
            assert response.status_code == 200, response.text

            with anyio.fail_after(10):
                while True:
                    answer = await inspect(http)
                    rooms = {r["name"]: r for r in answer["rooms"]}
                    room = rooms.get("note/inspected")
                    if room is not None and room["awareness"] == 1 and room["size"] > 500:
                        break
                    await anyio.sleep(0.05)
            assert room["connections"] == 1
            assert answer["org"] == "default" and answer["node"]
            sids = [f["sid"] for f in answer["frames"]]
            assert sids == sorted(sids, reverse=True)  # newest first
            assert "i-1" in [f["id"] for f in answer["frames"]]
            assert answer["newest_sid"] == sids[0]
            store = answer["store"]
            assert store["ok"] is True and store["commits"] >= 1
            assert store["mean_commit_ms"] is not None and store["queued"] >= 0
            assert answer["node_totals"]["connections"] >= 1

            limited = await inspect(http, rooms=0, frames=0)
            assert limited["rooms"] == [] and limited["rooms_total"] >= 1
            assert limited["frames"] == []
        for bad in ({"rooms": "-1"}, {"frames": "51"}, {"rooms": "x"}):
            response = await http.get("/admin/inspect", params=bad)
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "invalid_request"


async def test_admins_only_and_their_own_org(server_factory: Any) -> None:
    server = server_factory(*FAST, "--auth-secret", SECRET)
    admin = token(sub="root", org="orga", mode="admin")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        connect(server.ws_url, "note/a", token=token(org="orga")) as mine,
        connect(server.ws_url, "note/b", token=token(org="orgb")) as theirs,
    ):
        await mine.synced()
        await theirs.synced()
        assert (await http.get("/admin/inspect")).status_code == 401
        writer = {"Authorization": f"Bearer {token(org='orga', mode='write')}"}
        refused = await http.get("/admin/inspect", headers=writer)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        response = await http.get("/admin/inspect", headers={"Authorization": f"Bearer {admin}"})
        assert response.status_code == 200, response.text
        names = [r["name"] for r in response.json()["rooms"]]
        assert names == ["note/a"], names
