"""A database written before per-tenant sids, served by a real server: a client of a
tenant reads the old frames with their sids and the new ones continue its sequence
(issue 11, item 5: the sid sequence as seen by a client is the tenant's)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import websockets

from tests.integration.test_sync_feed import FAST, FrameSocket, delta, feed_url, mutate
from tests.unit.test_store_tenants import make_v2_database

pytestmark = pytest.mark.anyio


async def test_version_2_database_keeps_old_sids_and_continues_the_tenants_sequence(
    server_factory, tmp_path: Path
) -> None:
    db = tmp_path / "v2.db"
    old = make_v2_database(db, a="default", b="other", c="gone")
    assert old["default"] == [3, 7]  # global sids 1..8, interleaved with "other"
    server = server_factory(*FAST, db=db)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        page = await delta(http, 2)
        assert [f["sid"] for f in page["frames"]] == [3, 7] and page["next"] == 7
        async with websockets.connect(feed_url(server, since=7)) as ws:
            results = await mutate(http, {"t": "task", "id": "n1", "op": "i", "p": {"x": 1}})
            assert results[0]["sid"] == 8  # "other"'s sid 8 is not in our sequence
            frames = await FrameSocket(ws).frames_until(8)
            assert [f["sid"] for f in frames] == [8]
        results = await mutate(http, {"t": "task", "id": "n1", "op": "u", "p": {"x": 2}})
        assert results[0]["sid"] == 9
        page = await delta(http, 7)
        assert [f["sid"] for f in page["frames"]] == [8, 9] and page["next"] == 9
        records = (await http.get("/sync/v1/records")).json()
        assert records["sid"] == 9
