"""Against a real server: no silent gaps in the frame feed, and bounds on what one
client can make the server hold (awareness, pending updates, rooms, missing docs)."""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Text

from crdt_sync.client import connect
from rooms.codec import AwarenessEntry, encode_awareness_update, encode_sync_update

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")


async def closed_with(ws: Any, timeout: float = 10.0) -> tuple[int, list[Any]]:
    """Read until the server closes; its close code and what came before."""
    received = []
    with anyio.fail_after(timeout):
        try:
            while True:
                received.append(await ws.recv())
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, received


async def healthz(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/healthz")
    assert response.status_code == 200
    return response.json()


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.02)


def ws_base(server: Any) -> str:
    return server.url.replace("http://", "ws://", 1)


async def write_past_retention(http: httpx.AsyncClient, retention: int) -> dict[str, Any]:
    """Write until the log is trimmed past sid ``retention``; the 410 body delta gives."""
    await write_frames(http, retention + retention // 10 + 50, retention, 4000)
    with anyio.fail_after(30):
        while True:
            probe = await http.get("/sync/v1/delta", params={"since": retention})
            if probe.status_code == 410:
                return probe.json()
            await anyio.sleep(0.05)


async def write_frames(http: httpx.AsyncClient, count: int, start: int, size: int) -> None:
    """``count`` frames of about ``size`` bytes each (updates of one record), 100 per
    request: a catch-up page reads on to the end of a request's frames, and a short
    read-ahead keeps the slow reader's next read behind the trim."""
    done = 0
    while done < count:
        n = min(100, count - done)
        mutations = [
            {"t": "blob", "id": "1", "op": "u", "p": {"v": f"{start + done + i}:" + "x" * size}}
            for i in range(n)
        ]
        response = await http.post("/sync/v1/mutations", json={"mutations": mutations})
        assert response.status_code == 200, response.text
        assert all(r["status"] == 200 for r in response.json()["results"]), response.text
        done += n


def slow_reader_socket(url: str) -> socket.socket:
    """A TCP socket with a small receive buffer (no autotuning): a client that is slow
    to read holds the server's catch-up after a few pages instead of taking it all."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect((host, int(port)))
    return sock


# -- finding 5: no silent gaps --------------------------------------------------------


async def test_ws_catch_up_trimmed_meanwhile_gets_reset_not_a_gap(server_factory) -> None:
    """A subscriber catching up from an old ``since`` while writes go on and the log is
    trimmed past it gets every frame up to where it is, then the since_too_old reset
    with the bootstrap cursor and close 4410: never a jump over trimmed frames."""
    retention = 3000
    server = server_factory(*FAST, "--frame-retention", str(retention))
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        created = await http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "blob", "id": "1", "op": "i", "p": {"v": "0"}}]},
        )
        assert created.status_code == 200, created.text
        await write_frames(http, retention - 1, 1, 4000)
        sock = slow_reader_socket(server.url)
        # No permessage-deflate: a server that accepts it (hypercorn always does) would
        # squeeze these repetitive frames into the socket buffers whole, and the reader
        # would not be slow in bytes at all.
        async with websockets.connect(
            ws_base(server) + "/sync/v1/ws?since=0",
            sock=sock,
            max_size=None,
            max_queue=1,
            compression=None,
        ) as ws:
            first = json.loads(await ws.recv())
            assert first[0]["sid"] == 1
            # The reader pauses; the log moves on and is trimmed past all it holds.
            gone = await write_past_retention(http, retention)
            sids = [f["sid"] for f in first]
            last: dict[str, Any] | None = None
            code = None
            with anyio.fail_after(60):
                try:
                    async for message in ws:
                        body = json.loads(message)
                        if isinstance(body, list):
                            assert last is None, "frames after the reset"
                            sids += [f["sid"] for f in body]
                            if sids[-1] >= gone["newest_sid"]:
                                break
                        else:
                            last = body
                except websockets.ConnectionClosed as exc:
                    assert exc.rcvd is not None
                    code = exc.rcvd.code
    assert sids == list(range(1, sids[-1] + 1)), (
        f"gap in the frames received: {sorted(set(range(1, sids[-1] + 1)) - set(sids))[:3]}..."
    )
    # The reader held page one and the server at most a few more when the log was
    # trimmed past them: it cannot have caught up, so it must have been reset.
    assert sids[-1] < gone["oldest_sid"]
    assert last is not None and last["error"] == "since_too_old"
    assert last["bootstrap"] == "/sync/v1/records" and last["oldest_sid"] > sids[-1]
    assert code == 4410


# -- finding 10: bounds ---------------------------------------------------------------


async def test_reads_of_missing_docs_answer_404_without_loading_a_room(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(20):
            assert (await http.get(f"/docs/nope-{i}")).status_code == 404
            assert (await http.get(f"/docs/nope/{i}/update")).status_code == 404
        assert (await healthz(http))["rooms"] == 0
        # A stored doc is still read (and then loaded, as before).
        assert (await http.post("/docs/there/update", content=_text_update("hi"))).status_code
        assert (await http.get("/docs/there")).json()["content"] == {"body": "hi"}


def _text_update(text: str) -> bytes:
    doc = Doc()
    doc.get("body", type=Text).insert(0, text)
    return doc.get_update()


async def test_awareness_ids_past_the_per_connection_bound_close_4460(server_factory) -> None:
    server = server_factory("--max-awareness-ids-per-connection", "4")
    async with (
        websockets.connect(server.ws_url + "/aw") as bystander,
        websockets.connect(server.ws_url + "/aw") as flooder,
    ):
        await bystander.recv()
        await flooder.recv()
        four = [AwarenessEntry(i, 1, '{"u":1}') for i in range(1, 5)]
        await flooder.send(encode_awareness_update(four))
        await flooder.send(encode_awareness_update([AwarenessEntry(5, 1, '{"u":1}')]))
        code, _ = await closed_with(flooder)
        assert code == 4460
        # The others stay, and still see the four states it was allowed.
        await bystander.send(encode_awareness_update([AwarenessEntry(99, 1, '{"u":2}')]))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await healthz(http))["connections"] == 1


async def test_awareness_ids_past_the_per_room_bound_close_4460(server_factory) -> None:
    server = server_factory("--max-awareness-ids-per-room", "3")
    async with (
        websockets.connect(server.ws_url + "/room") as first,
        websockets.connect(server.ws_url + "/room") as second,
    ):
        await first.recv()
        await second.recv()
        await first.send(encode_awareness_update([AwarenessEntry(i, 1, "{}") for i in (1, 2)]))
        await second.send(encode_awareness_update([AwarenessEntry(3, 1, "{}")]))
        await second.send(encode_awareness_update([AwarenessEntry(4, 1, "{}")]))
        code, _ = await closed_with(second)
        assert code == 4460


async def test_update_waiting_for_missing_deps_past_the_bound_closes_4413(server_factory) -> None:
    """The sender of updates that can never be integrated is closed; the pending state
    is dropped; editors of the same room keep syncing."""
    server = server_factory("--max-pending-bytes", "20000")
    doc = Doc()
    text = doc.get("body", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(40):
        text += f"{i}:" + "x" * 1000
    async with (
        connect(server.ws_url, "shared") as alice,
        connect(server.ws_url, "shared") as bob,
        websockets.connect(server.ws_url + "/shared", max_size=None) as attacker,
    ):
        with anyio.fail_after(10):
            await alice.synced()
            await bob.synced()
        await attacker.recv()
        for update in updates[1:]:  # never the first one: all wait for it
            await attacker.send(encode_sync_update(update))
        code, _ = await closed_with(attacker)
        assert code == 4413
        alice.doc.get("body", type=Text).insert(0, "still syncing")
        bob_text = bob.doc.get("body", type=Text)

        async def synced() -> bool:
            return str(bob_text) == "still syncing"

        await wait_for(synced)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/docs/shared")).json()["content"] == {"body": "still syncing"}


async def test_views_past_the_per_connection_bound_close_4461(server_factory) -> None:
    server = server_factory(*FAST, "--max-views-per-connection", "3", "--room-idle-seconds", "0.1")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        # A view is of a record that exists (else not_found, and no room is loaded).
        made = [{"t": "task", "id": str(i), "op": "i", "p": {"n": i}} for i in range(4)]
        response = await http.post("/sync/v1/mutations", json={"mutations": made})
        assert all(r["status"] == 201 for r in response.json()["results"]), response.text
        with anyio.fail_after(10):
            while (await healthz(http))["rooms"]:
                await anyio.sleep(0.05)  # their rooms unload once idle
        async with websockets.connect(ws_base(server) + "/sync/v1/ws") as ws:
            for i in range(3):
                await ws.send(json.dumps({"type": "view", "t": "task", "id": str(i)}))
            for _ in range(3):  # a presence answer each
                assert json.loads(await ws.recv())["type"] == "presence"
            with anyio.fail_after(10):  # the three viewed rooms (held), and no other
                while (await healthz(http))["rooms"] != 3:
                    await anyio.sleep(0.05)
            await ws.send(json.dumps({"type": "watch", "t": "task", "id": "1"}))  # has it
            assert json.loads(await ws.recv())["type"] == "presence"
            await ws.send(json.dumps({"type": "view", "t": "task", "id": "3"}))
            code, received = await closed_with(ws)
            assert code == 4461
            assert json.loads(received[-1])["error"] == "too_many_views"
            assert (await healthz(http))["rooms"] <= 3


async def test_max_rooms_refuses_joins_past_it_and_unloads_idle_rooms_first(
    server_factory,
) -> None:
    server = server_factory("--max-rooms", "2", "--room-idle-seconds", "60")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        async with connect(server.ws_url, "a") as a, connect(server.ws_url, "b") as b:
            with anyio.fail_after(10):
                await a.synced()
                await b.synced()
            a.doc.get("body", type=Text).insert(0, "from a")
            async with websockets.connect(server.ws_url + "/c") as c:
                code, _ = await closed_with(c)
                assert code == 1013
            refused = await http.post("/docs/c/update", content=_text_update("c"))
            assert refused.status_code == 503 and refused.json()["error"] == "too_many_rooms"

            async def a_stored() -> bool:  # what a wrote reached the room
                return (await http.get("/docs/a")).json()["content"] == {"body": "from a"}

            await wait_for(a_stored)
        # Both left; their rooms wait 60 s to unload but are idle: they make room.
        for name in "cde":
            stored = await http.post(f"/docs/{name}/update", content=_text_update(name))
            assert stored.status_code == 200, stored.text
        assert (await healthz(http))["rooms"] == 2
        assert (await http.get("/docs/a")).json()["content"] == {"body": "from a"}


async def test_sse_catch_up_trimmed_meanwhile_ends_with_reset_event(server_factory) -> None:
    """The same over SSE: gap-free ``id:`` frames, then ``event: error`` with the
    since_too_old body, then the stream ends."""
    retention = 3000
    server = server_factory(*FAST, "--frame-retention", str(retention))
    slow = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)]
    )
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60) as http,
        httpx.AsyncClient(base_url=server.url, timeout=60, transport=slow) as reader,
    ):
        created = await http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "blob", "id": "1", "op": "i", "p": {"v": "0"}}]},
        )
        assert created.status_code == 200, created.text
        await write_frames(http, retention - 1, 1, 4000)
        sids: list[int] = []
        events: list[tuple[str, dict[str, Any]]] = []
        async with reader.stream("GET", "/sync/v1/events", params={"since": 0}) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            event = "message"

            def take(line: str) -> bool:
                """One SSE line; whether it ended an event carrying frames."""
                nonlocal event
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    kind, event = event, "message"
                    if kind in ("message", "tx"):
                        assert not events, "frames after the reset"
                        sids.extend(
                            [data["sid"]]
                            if kind == "message"
                            else [f["sid"] for f in data["frames"]]
                        )
                        return True
                    events.append((kind, data))
                return False

            with anyio.fail_after(30):
                async for line in lines:  # the first frame, then the reader pauses
                    if take(line):
                        break
            gone = await write_past_retention(http, retention)
            with anyio.fail_after(60):
                async for line in lines:
                    if take(line) and sids[-1] >= gone["newest_sid"]:
                        break
    assert sids == list(range(1, sids[-1] + 1)), "gap in the frames received"
    assert sids[-1] < gone["oldest_sid"]
    assert events and events[0][0] == "error"
    reset = events[0][1]
    assert reset["error"] == "since_too_old" and reset["bootstrap"] == "/sync/v1/records"
    assert reset["oldest_sid"] > sids[-1]


async def test_http_update_waiting_for_missing_deps_past_the_bound_is_413(server_factory) -> None:
    server = server_factory("--max-pending-bytes", "20000")
    doc = Doc()
    text = doc.get("body", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(4):
        text += f"{i}:" + "x" * 15_000
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        stored = await http.post("/docs/h/update", content=_text_update("kept"))
        assert stored.status_code == 200
        waiting = await http.post("/docs/h/update", content=updates[2])  # lacks 0 and 1
        assert waiting.status_code == 200 and waiting.json()["applied"] is False
        refused = await http.post("/docs/h/update", content=updates[3])
        assert refused.status_code == 413 and refused.json()["error"] == "pending_too_large"
        # Dropped: the first two complete nothing any more.
        for update in updates[:2]:
            assert (await http.post("/docs/h/update", content=update)).status_code == 200
        content = (await http.get("/docs/h")).json()["content"]["body"]
        assert "kept" in content and "0:" in content and "1:" in content
        assert "2:" not in content and "3:" not in content
