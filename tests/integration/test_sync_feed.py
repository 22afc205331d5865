"""The SyncFrame feed against a real server: mutations, delta, records, WS, SSE, presence.

Clients are what a user would use: httpx for HTTP, the ``websockets`` library for the
frame WebSocket, an SSE reader over httpx's streaming, and crdt-sync's Python Yjs
client as an editor.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Map, Text

from crdt_sync.client import connect

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")


# -- helpers ----------------------------------------------------------------------------


async def mutate(http: httpx.AsyncClient, *mutations: dict, **extra: Any) -> list[dict]:
    response = await http.post("/sync/v1/mutations", json={"mutations": list(mutations), **extra})
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def delta(http: httpx.AsyncClient, since: int = 0, **params: Any) -> dict:
    response = await http.get("/sync/v1/delta", params={"since": since, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def all_frames(http: httpx.AsyncClient, since: int = 0, **params: Any) -> list[dict]:
    frames: list[dict] = []
    while True:
        page = await delta(http, since, limit=1000, **params)
        frames += page["frames"]
        since = page["next"]
        if not page["more"]:
            return frames


class FrameSocket:
    """A frame-feed WebSocket client that collects frames and other messages."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self.events: list[dict] = []

    async def pump(self, until, timeout: float = 10.0) -> None:
        """Receive until ``until(self)`` holds."""
        with anyio.fail_after(timeout):
            while not until(self):
                message = json.loads(await self.ws.recv())
                if isinstance(message, list):
                    self.frames += message
                else:
                    self.events.append(message)

    async def frames_until(self, sid: int, timeout: float = 10.0) -> list[dict]:
        await self.pump(lambda s: bool(s.frames) and s.frames[-1]["sid"] >= sid, timeout)
        return self.frames


def feed_url(server, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return (
        server.url.replace("http://", "ws://", 1) + "/sync/v1/ws" + (f"?{query}" if query else "")
    )


async def closed_with(ws, timeout: float = 10.0) -> tuple[int, str, list]:
    received = []
    with anyio.fail_after(timeout):
        try:
            while True:
                received.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason, received


async def wait_for(predicate, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


# -- mutations --------------------------------------------------------------------------


async def test_insert_update_delete_produce_frames_and_records(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        [created] = await mutate(http, {"t": "task", "id": "1", "op": "i", "p": {"a": 1, "b": "x"}})
        assert created["status"] == 201 and created["sid"] >= 1
        [updated] = await mutate(
            http, {"t": "task", "id": "1", "op": "u", "p": {"b": None, "c": [1]}}
        )
        assert updated["sid"] > created["sid"]
        [same] = await mutate(http, {"t": "task", "id": "1", "op": "u", "p": {"a": 1}})
        assert same["sid"] is None, "a write that changes nothing makes no frame"
        records = (await http.get("/sync/v1/records")).json()
        assert records["records"] == [
            {"t": "task", "id": "1", "fields": {"a": 1, "c": [1]}, "sid": updated["sid"]}
        ]
        assert records["sid"] == updated["sid"]
        [deleted] = await mutate(http, {"t": "task", "id": "1", "op": "d"})
        frames = await all_frames(http)
        assert [(f["op"], f["p"]) for f in frames] == [
            ("i", {"a": 1, "b": "x"}),
            ("u", {"b": None, "c": [1]}),
            ("d", {}),
        ]
        assert [f["sid"] for f in frames] == [created["sid"], updated["sid"], deleted["sid"]]
        assert all(f["who"] == "anonymous" and f["t"] == "task" and f["id"] == "1" for f in frames)
        assert (await http.get("/sync/v1/records")).json()["records"] == []
        assert (await http.get("/docs/task/1")).status_code == 404
        # Deleted records can be created again.
        [again] = await mutate(http, {"t": "task", "id": "1", "op": "i", "p": {"a": 2}})
        assert again["status"] == 201


async def test_batch_errors_are_per_mutation(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, {"t": "task", "id": "1", "op": "i", "p": {"a": 1}})
        results = await mutate(
            http,
            {"t": "task", "id": "1", "op": "i", "p": {"a": 2}},
            {"t": "task", "id": "404", "op": "u", "p": {"a": 2}},
            {"t": "task", "id": "404", "op": "d"},
            {"t": "task", "id": "1", "op": "u", "p": {"a": 2**60}},
            {"t": "task", "id": "2", "op": "i", "p": {"a": 3}},
        )
        assert [r["status"] for r in results] == [409, 404, 404, 422, 201]
        errors = [r.get("error") for r in results]
        assert errors == ["exists", "not_found", "not_found", "invalid_field", None]
        assert "p.a" in results[3]["detail"]
        frames = await all_frames(http)
        assert [(f["id"], f["op"]) for f in frames] == [("1", "i"), ("2", "i")]


async def test_replayed_client_tx_id_returns_the_original_result(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        m = {"t": "task", "id": "1", "op": "i", "p": {"n": 1}, "client_tx_id": "tx-1"}
        [first] = await mutate(http, m)
        [again] = await mutate(http, m)
        assert again.pop("replayed") is True
        assert again == first
        # The same key replayed concurrently by an offline queue flushing twice.
        u = {"t": "task", "id": "1", "op": "u", "p": {"n": 2}, "client_tx_id": "tx-2"}
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(mutate, http, u)
        frames = await all_frames(http)
        assert [f["ctx"]["client_tx_id"] for f in frames] == ["tx-1", "tx-2"]
        # A replay never changes anything, even when the record moved on since.
        await mutate(http, {"t": "task", "id": "1", "op": "u", "p": {"n": 3}})
        [replayed] = await mutate(http, u)
        assert replayed["replayed"] is True
        assert (await http.get("/sync/v1/records")).json()["records"][0]["fields"] == {"n": 3}


async def test_conflicts_report_fields_another_writer_set_since_base_sid(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        [base] = await mutate(http, {"t": "task", "id": "1", "op": "i", "p": {"s": "new", "o": 1}})
        base_sid = base["sid"]
        [a] = await mutate(
            http, {"t": "task", "id": "1", "op": "u", "p": {"s": "doing"}}, client_id="alice"
        )
        assert a["conflicts"] == []
        # Bob saw only base_sid: his write of s overwrites Alice's; o was not touched.
        [b] = await mutate(
            http,
            {"t": "task", "id": "1", "op": "u", "p": {"s": "done", "o": 2}, "base_sid": base_sid},
            client_id="bob",
        )
        assert b["conflicts"] == ["s"]
        assert b["overwritten"]["s"] == {"value": "doing", "who": "anonymous", "sid": a["sid"]}
        # Alice again from her old base: her own earlier write is no conflict, Bob's is.
        [a2] = await mutate(
            http,
            {"t": "task", "id": "1", "op": "u", "p": {"s": "x", "o": 3}},
            base_sid=base_sid,
            client_id="alice",
        )
        assert a2["conflicts"] == ["o", "s"]
        assert a2["overwritten"]["o"]["value"] == 2
        # Writing the value already there overwrites nothing.
        [same] = await mutate(
            http, {"t": "task", "id": "1", "op": "u", "p": {"s": "x"}, "base_sid": base_sid}
        )
        assert same["conflicts"] == []


async def test_mutation_of_a_text_field_edits_the_editors_text(server_factory) -> None:
    server = server_factory(*FAST)
    async with connect(server.ws_url, "note/1") as editor:
        with anyio.fail_after(10):
            await editor.synced()
        editor.doc["body"] = body = Text("hello wörld")
        editor.doc["fields"] = fields = Map()
        await editor.flush()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await wait_for_record(http, "note", "1", lambda f: f.get("body") == "hello wörld")
            [result] = await mutate(
                http,
                {"t": "note", "id": "1", "op": "u", "p": {"body": "hello brave wörld!", "s": 1}},
            )
            assert result["status"] == 200
            await wait_for(lambda: str(body) == "hello brave wörld!" and fields.get("s") == 1)
            [bad] = await mutate(http, {"t": "note", "id": "1", "op": "u", "p": {"body": 5}})
            assert bad["status"] == 422 and "p.body" in bad["detail"]


async def wait_for_record(http, t: str, record_id: str, check, timeout: float = 10.0) -> dict:
    with anyio.fail_after(timeout):
        while True:
            rows = (await http.get("/sync/v1/records", params={"t": t})).json()["records"]
            for row in rows:
                if row["id"] == record_id and check(row["fields"]):
                    return row
            await anyio.sleep(0.05)


# -- Yjs edits become frames ------------------------------------------------------------


async def test_yjs_typing_is_coalesced_into_few_frames(server_factory) -> None:
    server = server_factory("--frame-coalesce-ms", "300", "--delta-min-interval-ms", "0")
    async with websockets.connect(feed_url(server, since=0)) as ws:
        feed = FrameSocket(ws)
        async with connect(server.ws_url, "note/7") as editor:
            with anyio.fail_after(10):
                await editor.synced()
            editor.doc["body"] = body = Text()
            typed = "the quick brown fox jumps over the lazy dog"
            for char in typed:
                body += char
                await anyio.sleep(0.005)
            await feed.pump(lambda s: bool(s.frames) and s.frames[-1]["p"].get("body") == typed)
        assert feed.frames[0]["op"] == "i" and feed.frames[0]["t"] == "note"
        assert all(f["op"] == "u" for f in feed.frames[1:])
        assert len(feed.frames) < len(typed) / 4, f"{len(feed.frames)} frames for {len(typed)} keys"
        sids = [f["sid"] for f in feed.frames]
        assert sids == sorted(set(sids))


async def test_http_updates_and_deletes_of_record_docs_are_framed(server_factory) -> None:
    server = server_factory(*FAST)
    doc = Doc()
    doc["fields"] = fields = Map()
    fields["status"] = "open"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post("/docs/ticket/9/update", content=doc.get_update())
        assert response.status_code == 200
        row = await wait_for_record(http, "ticket", "9", lambda f: f == {"status": "open"})
        response = await http.delete("/docs/ticket/9")
        assert response.status_code == 200
        frames = await all_frames(http)
        assert [(f["op"], f["p"]) for f in frames] == [("i", {"status": "open"}), ("d", {})]
        assert frames[0]["sid"] == row["sid"]
        # A plain document (no "/") is never a record.
        await http.post("/docs/plain/update", content=doc.get_update())
        await anyio.sleep(0.3)
        assert len(await all_frames(http)) == 2


# -- catch-up and resume ----------------------------------------------------------------


async def test_reconnect_with_since_gets_exactly_the_missed_frames(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        await mutate(
            http, *[{"t": "task", "id": str(i), "op": "i", "p": {"n": -1}} for i in range(7)]
        )
        async with websockets.connect(feed_url(server, since=0)) as ws:
            feed = FrameSocket(ws)
            await feed.frames_until(7)
            last = feed.frames[-1]["sid"]
        # 1,000 changes while disconnected: 10 batches of 100 mutations.
        for batch in range(10):
            await mutate(
                http,
                *[
                    {"t": "task", "id": str(i % 7), "op": "u", "p": {"n": i}}
                    for i in range(batch * 100, batch * 100 + 100)
                ],
            )
        missed = await all_frames(http, last)
        assert [f["p"]["n"] for f in missed] == list(range(1000))
        # Meanwhile a writer keeps going, so catch-up and live frames meet mid-stream.
        async with websockets.connect(feed_url(server, since=last)) as ws:
            feed = FrameSocket(ws)
            async with anyio.create_task_group() as tg:

                async def keep_writing() -> None:
                    for i in range(50):
                        await mutate(http, {"t": "live", "id": str(i), "op": "i", "p": {"i": i}})

                tg.start_soon(keep_writing)
                await feed.frames_until(missed[-1]["sid"], timeout=30)
            everything = await all_frames(http, last)
            await feed.frames_until(everything[-1]["sid"], timeout=30)
        got = [f["sid"] for f in feed.frames]
        assert got == [f["sid"] for f in everything], "gap, duplicate or reorder at the boundary"
        assert feed.frames[: len(missed)] == missed
        assert len(everything) == len(missed) + 50


async def test_sse_resumes_with_last_event_id(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(5):
            await mutate(http, {"t": "task", "id": str(i), "op": "i", "p": {"i": i}})
        first = await read_sse(http, {}, {"since": "0"}, count=3)
        assert [int(e["id"]) for e in first] == [1, 2, 3]
        assert [json.loads(e["data"])["id"] for e in first] == ["0", "1", "2"]
        for i in range(5, 8):
            await mutate(http, {"t": "task", "id": str(i), "op": "i", "p": {"i": i}})
        # EventSource reconnects to the same URL (since=0) with Last-Event-ID: that wins.
        rest = await read_sse(http, {"Last-Event-ID": "3"}, {"since": "0"}, count=5)
        assert [int(e["id"]) for e in rest] == [4, 5, 6, 7, 8]
        response = await http.get("/sync/v1/events", headers={"Last-Event-ID": "-1"})
        assert response.status_code == 400 and "Last-Event-ID" in response.json()["detail"]


async def read_sse(http, headers: dict, params: dict, count: int) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    with anyio.fail_after(10):
        async with http.stream("GET", "/sync/v1/events", headers=headers, params=params) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            event: dict[str, str] = {}
            async for line in s.aiter_lines():
                if line == "":
                    if "data" in event:
                        events.append(event)
                        if len(events) == count:
                            return events
                    event = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    event[key] = value
    return events


async def test_delta_pages_and_type_filter(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(5):
            await mutate(http, {"t": "a" if i % 2 else "b", "id": str(i), "op": "i", "p": {"i": i}})
        page = await delta(http, 0, limit=2)
        assert [f["sid"] for f in page["frames"]] == [1, 2] and page["more"] and page["next"] == 2
        page = await delta(http, 2, limit=10)
        assert [f["sid"] for f in page["frames"]] == [3, 4, 5] and not page["more"]
        typed = await delta(http, 0, t="a")
        assert [f["id"] for f in typed["frames"]] == ["1", "3"]
        assert typed["next"] == 5, "a filtered read still advances to the newest sid"
        empty = await delta(http, 5)
        assert empty == {"frames": [], "next": 5, "more": False, "up_to_date": True}
        records = (await http.get("/sync/v1/records", params={"limit": 2})).json()
        assert [(r["t"], r["id"]) for r in records["records"]] == [("a", "1"), ("a", "3")]
        more = (
            await http.get(
                "/sync/v1/records", params={"limit": 2, "cursor": records["next_cursor"]}
            )
        ).json()
        assert [(r["t"], r["id"]) for r in more["records"]] == [("b", "0"), ("b", "2")]


async def test_since_older_than_retention_is_410_with_bootstrap(server_factory) -> None:
    server = server_factory(*FAST, "--frame-retention", "10")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(40):
            await mutate(
                http, {"t": "task", "id": str(i % 8), "op": "u" if i >= 8 else "i", "p": {"i": i}}
            )
        await wait_for_async(lambda: oldest_kept(http), lambda oldest: oldest > 1)
        response = await http.get("/sync/v1/delta", params={"since": 0})
        assert response.status_code == 410
        body = response.json()
        assert body["error"] == "since_too_old" and body["bootstrap"] == "/sync/v1/records"
        boot = (await http.get("/sync/v1/records")).json()
        assert len(boot["records"]) == 8
        assert {r["id"]: r["fields"]["i"] for r in boot["records"]} == {
            str(i % 8): i for i in range(32, 40)
        }
        assert (await delta(http, boot["sid"]))["frames"] == []
        ahead = await http.get("/sync/v1/delta", params={"since": boot["sid"] + 100})
        assert ahead.status_code == 410
        async with websockets.connect(feed_url(server, since=0)) as ws:
            code, _, received = await closed_with(ws)
        assert code == 4410 and received[0]["error"] == "since_too_old"
        sse = await http.get("/sync/v1/events", params={"since": "0"})
        assert sse.status_code == 410 and sse.json()["error"] == "since_too_old"


async def oldest_kept(http) -> int:
    response = await http.get("/sync/v1/delta", params={"since": 0, "limit": 1})
    if response.status_code == 410:
        return response.json()["oldest_sid"] + 1
    return response.json()["frames"][0]["sid"]


async def wait_for_async(fetch, check, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check(await fetch()):
            await anyio.sleep(0.05)


async def test_delta_reads_are_rate_limited_with_429(server_factory) -> None:
    server = server_factory("--delta-min-interval-ms", "60000", "--delta-max-concurrency", "1")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/sync/v1/delta")).status_code == 200
        refused = await http.get("/sync/v1/delta")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "too_many_requests"
        assert (await http.get("/sync/v1/records")).status_code == 429
        # A client cannot buy itself another budget by naming itself (issue 11: the
        # throttle is keyed by the principal, here the address while auth is off).
        other = await http.get("/sync/v1/delta", params={"client_id": "other"})
        assert other.status_code == 429
        other = await http.get("/sync/v1/delta", headers={"X-Client-Id": "other"})
        assert other.status_code == 429
    concurrent = server_factory("--delta-min-interval-ms", "0", "--delta-max-concurrency", "1")
    async with httpx.AsyncClient(base_url=concurrent.url, timeout=30) as http:
        await mutate(
            http, *[{"t": "t", "id": str(i), "op": "i", "p": {"x": "y" * 500}} for i in range(500)]
        )
        statuses: list[int] = []

        async def read() -> None:
            response = await http.get("/sync/v1/delta", params={"limit": 1000})
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(read)
        assert set(statuses) <= {200, 429} and 200 in statuses
        assert 429 in statuses, "30 concurrent reads with a concurrency of 1: some must wait"


# -- durability -------------------------------------------------------------------------


async def test_frames_survive_a_restart(server_factory, tmp_path) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(20):
            await mutate(
                http, {"t": "task", "id": str(i % 4), "op": "u" if i >= 4 else "i", "p": {"i": i}}
            )
        before = await all_frames(http)
        records = (await http.get("/sync/v1/records")).json()
    server.stop()
    restarted = server_factory(*FAST, db=server.db)
    async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as http:
        assert await all_frames(http) == before
        assert (await http.get("/sync/v1/records")).json() == records
        [after] = await mutate(http, {"t": "task", "id": "0", "op": "u", "p": {"i": -1}})
        assert after["sid"] == before[-1]["sid"] + 1


async def test_kill_inside_the_coalescing_window_loses_no_frame(server_factory) -> None:
    """An update is durable but its frame is still waiting when the server is killed:
    the restarted server frames it (the stored projection is behind the log)."""
    server = server_factory("--frame-coalesce-ms", "60000", "--delta-min-interval-ms", "0")
    doc = Doc()
    doc["fields"] = fields = Map()
    fields["status"] = "open"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post("/docs/ticket/1/update", content=doc.get_update())
        assert response.status_code == 200
        assert await all_frames(http) == []
    server.kill()
    restarted = server_factory(*FAST, db=server.db)
    async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as http:
        await wait_for_async(lambda: all_frames(http), lambda frames: len(frames) == 1)
        [frame] = await all_frames(http)
        assert (frame["op"], frame["t"], frame["id"], frame["p"]) == (
            "i",
            "ticket",
            "1",
            {"status": "open"},
        )
        assert frame["who"] is None, "who made a recovered change is not known"
        records = (await http.get("/sync/v1/records")).json()["records"]
        assert records == [{"t": "ticket", "id": "1", "fields": {"status": "open"}, "sid": 1}]


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"mutations": {}}, "mutations"),
        ({"mutations": []}, "mutations"),
        ({"mutations": [1]}, "mutations[0]"),
        ({"mutations": [{"t": "a", "id": "1", "op": "x", "p": {}}]}, "mutations[0].op"),
        ({"mutations": [{"t": "a/b", "id": "1", "op": "i", "p": {}}]}, "mutations[0].t"),
        ({"mutations": [{"t": "a", "id": "", "op": "i", "p": {}}]}, "mutations[0].id"),
        ({"mutations": [{"t": "a", "id": 1, "op": "i", "p": {}}]}, "mutations[0].id"),
        ({"mutations": [{"t": "a", "id": "1", "op": "u", "p": []}]}, "mutations[0].p"),
        ({"mutations": [{"t": "a", "id": "1", "op": "u"}]}, "mutations[0].p"),
        ({"mutations": [{"t": "a", "id": "1", "op": "d", "p": {"x": 1}}]}, "mutations[0].p"),
        (
            {"mutations": [{"t": "a", "id": "1", "op": "u", "p": {}, "client_tx_id": 5}]},
            "mutations[0].client_tx_id",
        ),
        (
            {"mutations": [{"t": "a", "id": "1", "op": "u", "p": {}, "base_sid": -1}]},
            "mutations[0].base_sid",
        ),
        ({"mutations": [{"t": "a", "id": "1", "op": "u", "p": {}, "x": 1}]}, "mutations[0].x"),
        ({"mutations": [], "extra": 1}, "extra"),
    ],
)
async def test_malformed_mutations_are_400_naming_the_field(server, body, field) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post("/sync/v1/mutations", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_mutation"
        assert response.json()["field"] == field


async def test_bad_requests_change_nothing(server_factory) -> None:
    server = server_factory(*FAST, "--max-message-bytes", "2048", "--max-mutations", "3")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        valid = {"t": "a", "id": "1", "op": "i", "p": {"x": 1}}
        bad = {"t": "a", "id": "2", "op": "nope", "p": {}}
        response = await http.post("/sync/v1/mutations", json={"mutations": [valid, bad]})
        assert response.status_code == 400
        response = await http.post("/sync/v1/mutations", json={"mutations": [valid] * 4})
        assert response.status_code == 400 and response.json()["field"] == "mutations"
        response = await http.post(
            "/sync/v1/mutations",
            content=b'{"mutations": [',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400 and response.json()["error"] == "invalid_json"
        big = {"mutations": [{**valid, "p": {"x": "y" * 4000}}]}
        response = await http.post("/sync/v1/mutations", json=big)
        assert response.status_code == 413 and response.json()["error"] == "too_large"
        for params, name in [
            ({"since": "-1"}, "since"),
            ({"since": "abc"}, "since"),
            ({"limit": "0"}, "limit"),
            ({"t": "a/b"}, "t"),
        ]:
            response = await http.get("/sync/v1/delta", params=params)
            assert response.status_code == 400, params
            assert name in response.json()["detail"]
        response = await http.get("/sync/v1/records", params={"cursor": "!!"})
        assert response.status_code == 400 and "cursor" in response.json()["detail"]
        assert await all_frames(http) == []
        assert (await http.get("/healthz")).json()["status"] == "ok"
    assert "Traceback" not in server.log()


async def test_bad_frame_socket_messages_close_with_documented_codes(server_factory) -> None:
    server = server_factory(*FAST)
    cases = [
        ("not json", 1007),
        (b"\x00binary", 1003),
        (json.dumps({"type": "subscribe"}), 4400),
        (json.dumps([1, 2]), 4400),
        (json.dumps({"type": "view", "t": "a/b", "id": "1"}), 4400),
        ("x" * 70_000, 1009),
    ]
    for message, code in cases:
        async with websockets.connect(feed_url(server), max_size=None) as ws:
            await ws.send(message)
            got, _, _ = await closed_with(ws)
            assert got == code, (message[:20], got)
    async with websockets.connect(feed_url(server, since="x")) as ws:
        got, _, received = await closed_with(ws)
    assert got == 4400 and received[0]["error"] == "invalid_parameter"
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_ping_pong_and_silent_clients_are_closed(server_factory) -> None:
    server = server_factory(*FAST, "--ping-interval", "0.2", "--ping-timeout", "0.6")
    async with websockets.connect(feed_url(server)) as ws:
        for _ in range(3):
            await ws.send(json.dumps({"type": "ping"}))
            with anyio.fail_after(5):
                # Auth off: the (absent) token never expires.
                assert json.loads(await ws.recv()) == {"type": "pong", "expires_in": None}
            await anyio.sleep(0.3)
        code, _, _ = await closed_with(ws, timeout=5)
    assert code == 4408


# -- presence ---------------------------------------------------------------------------


async def test_presence_of_editors_and_frame_viewers(server_factory) -> None:
    server = server_factory(*FAST)
    async with connect(server.ws_url, "doc/1") as editor:
        with anyio.fail_after(10):
            await editor.synced()
        editor.awareness.set_local_state({"user": {"name": "ed"}, "cursor": 3})
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await wait_for_async(
                lambda: http.get("/sync/v1/presence/doc/1"),
                lambda r: any(
                    p["state"].get("user") == {"name": "ed"} for p in r.json()["present"]
                ),
            )
            async with websockets.connect(feed_url(server)) as ws:
                feed = FrameSocket(ws)
                await ws.send(
                    json.dumps({"type": "view", "t": "doc", "id": "1", "state": {"color": "red"}})
                )
                await feed.pump(lambda s: any(e["type"] == "presence" for e in s.events))
                # The editor sees the viewer in its awareness, like any peer.
                await wait_for(
                    lambda: any(
                        s.get("viewer") is True and s.get("color") == "red"
                        for s in editor.remote_states.values()
                    )
                )
                # The viewer hears when the editor's state changes.
                editor.awareness.set_local_state({"user": {"name": "ed"}, "cursor": 9})
                await feed.pump(
                    lambda s: any(
                        p["state"].get("cursor") == 9
                        for e in s.events
                        if e["type"] == "presence"
                        for p in e["present"]
                    )
                )
                present = (await http.get("/sync/v1/presence/doc/1")).json()["present"]
                assert sorted(p["viewer"] for p in present) == [False, True]
            # The viewer's connection ended: its awareness state is removed.
            await wait_for(
                lambda: not any(s.get("viewer") for s in editor.remote_states.values())
            )
            response = await http.get("/sync/v1/presence/none/here")
            assert response.json() == {"t": "none", "id": "here", "present": []}


async def test_a_batch_is_applied_in_order_and_committed_together(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        batch = [{"t": "task", "id": "1", "op": "i", "p": {"n": 0}, "client_tx_id": "b-0"}]
        batch += [
            {"t": "task", "id": "1", "op": "u", "p": {"n": i}, "client_tx_id": f"b-{i}"}
            for i in range(1, 50)
        ]
        batch.append(batch[10])  # an offline queue that holds one entry twice
        batch.append({"t": "task", "id": "404", "op": "u", "p": {"n": 1}})
        results = await mutate(http, *batch)
        sids = [r["sid"] for r in results[:50]]
        assert sids == sorted(sids) and len(set(sids)) == 50
        assert results[50] == {**results[10], "index": 50, "replayed": True}
        assert results[51]["status"] == 404
        frames = await all_frames(http)
        assert [f["p"]["n"] for f in frames] == list(range(50))
        assert [f["sid"] for f in frames] == sids
        # Replaying the whole batch changes nothing and answers the same.
        again = await mutate(http, *batch[:50])
        assert [r["sid"] for r in again] == sids and all(r["replayed"] for r in again)
        assert len(await all_frames(http)) == 50
