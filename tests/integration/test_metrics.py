"""``GET /metrics`` against a real server: the counters move with real traffic."""

from __future__ import annotations

import anyio
import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Text

from crdt_sync.client import connect

pytestmark = pytest.mark.anyio


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_follow_yjs_traffic_frames_and_mutations(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        before = await scrape(http)
        assert before[("crdt_sync_rooms", ())] == 0
        url = server.ws_url
        async with connect(url, "metrics/1") as a, connect(url, "metrics/1") as b:
            with anyio.fail_after(10):
                await a.synced()
                await b.synced()
            a.doc["body"] = text = Text()
            for i in range(64):
                text += str(i % 10)
                await a.flush()
            received = b.doc.get("body", type=Text)
            with anyio.fail_after(10):
                while len(str(received)) < 64:
                    await anyio.sleep(0.01)
            during = await scrape(http)
            assert during[("crdt_sync_rooms", ())] == 1
            assert during[("crdt_sync_connections", (("kind", "yjs"),))] == 2
        update = ("type", "sync_update")
        assert during[("crdt_sync_messages_received_total", (update,))] >= 64
        assert during[("crdt_sync_messages_sent_total", (update,))] >= 64
        assert during[("crdt_sync_sent_bytes_total", (update,))] > 64
        # One delivery in 16 is timed: 64 relayed updates give a few samples.
        assert during[("crdt_sync_delivery_latency_seconds_count", ())] >= 1
        # Relayed before they are committed (by design): on a busy disk the first group
        # commit's fsync may still be running when the last update has been relayed.
        with anyio.fail_after(10):
            while (await scrape(http))[("crdt_sync_store_commit_seconds_count", ())] < 1:
                await anyio.sleep(0.05)
        with anyio.fail_after(10):
            while (await scrape(http))[("crdt_sync_frames_total", ())] < 1:
                await anyio.sleep(0.05)
        response = await http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "metrics", "id": "2", "op": "u", "p": {"x": 1}}]},
        )
        assert response.json()["results"][0]["status"] == 404
        after = await scrape(http)
        assert after[("crdt_sync_mutations_total", (("status", "404"),))] == 1
        async with websockets.connect(server.ws_url + "/metrics/3") as ws:
            await ws.send("text is not the protocol")
            with anyio.fail_after(10):
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed:
                    pass
        after = await scrape(http)
        assert after[("crdt_sync_server_closes_total", (("code", "1003"),))] == 1


async def test_startup_objects_are_frozen_and_unloads_are_collected(server_factory) -> None:
    server = server_factory("--room-idle-seconds", "0.2")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        before = await scrape(http)
        # Frozen once the app was up: full collections skip the startup heap.
        assert before[("crdt_sync_gc_frozen_objects", ())] > 10_000
        assert before[("crdt_sync_unload_collections_total", ())] == 0
        async with connect(server.ws_url, "metrics/unload") as client:
            with anyio.fail_after(10):
                await client.synced()
        with anyio.fail_after(20):  # unloaded after 0.2 s, collected 2 s after the wave
            while (await scrape(http))[("crdt_sync_unload_collections_total", ())] < 1:
                await anyio.sleep(0.1)
        after = await scrape(http)
        assert after[("crdt_sync_rooms", ())] == 0
        # What it found depends on what younger collections took first: counted, >= 0.
        assert after[("crdt_sync_unload_collected_objects_total", ())] >= 0
