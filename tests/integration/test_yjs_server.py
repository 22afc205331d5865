"""A real ``crdt-sync serve`` process and real pycrdt / websockets clients."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import time

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Map, Text

from crdt_sync.client import connect
from crdt_sync.records.projection import doc_to_json as doc_json
from rooms.codec import (
    AwarenessEntry,
    AwarenessUpdate,
    SyncStep1,
    SyncStep2,
    decode_message,
    decode_state_vector,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_update,
)

pytestmark = pytest.mark.anyio


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def recv_until(ws, predicate, timeout: float = 10.0):
    """Receive decoded messages until one satisfies ``predicate``; return it."""
    with anyio.fail_after(timeout):
        while True:
            message = decode_message(await ws.recv())
            if predicate(message):
                return message


async def closed_with(ws, timeout: float = 10.0) -> tuple[int, str]:
    with anyio.fail_after(timeout):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason


async def test_two_clients_converge(server) -> None:
    async with connect(server.ws_url, "issue/123") as a, connect(server.ws_url, "issue/123") as b:
        with anyio.fail_after(10):
            await a.synced()
            await b.synced()
        a.doc["body"] = text_a = Text()
        text_a += "hello"
        b.doc["fields"] = fields_b = Map()
        fields_b["status"] = "open"
        text_b = b.doc.get("body", type=Text)
        fields_a = a.doc.get("fields", type=Map)
        await wait_for(lambda: str(text_b) == "hello" and fields_a.get("status") == "open")
        text_b += " world"
        await wait_for(lambda: str(text_a) == "hello world")
        # State vectors encode clients in no fixed order: compare what they decode to.
        assert doc_json(a.doc) == doc_json(b.doc)
        assert decode_state_vector(a.doc.get_state()) == decode_state_vector(b.doc.get_state())


async def test_late_joiner_gets_full_state(server) -> None:
    async with connect(server.ws_url, "doc") as a:
        with anyio.fail_after(10):
            await a.synced()
        a.doc["body"] = text = Text()
        for i in range(50):
            text += f"{i},"
        expected = str(text)
        async with connect(server.ws_url, "doc") as late:
            with anyio.fail_after(10):
                await late.synced()
            # A's provider may still have updates in flight; they arrive as relays.
            late_text = late.doc.get("body", type=Text)
            await wait_for(lambda: str(late_text) == expected)


async def test_state_survives_after_everyone_left(server) -> None:
    async with connect(server.ws_url, "notes") as a:
        with anyio.fail_after(10):
            await a.synced()
        a.doc["body"] = text = Text()
        text += "kept"
    async with connect(server.ws_url, "notes") as b:
        with anyio.fail_after(10):
            await b.synced()
        assert str(b.doc.get("body", type=Text)) == "kept"


async def test_names_with_slashes_and_non_ascii_are_distinct_rooms(server) -> None:
    names = ["issue/123", "issue/123/sub", "héllo wörld", "issue"]
    clients = {}
    for name in names:
        async with connect(server.ws_url, name) as c:
            with anyio.fail_after(10):
                await c.synced()
            c.doc["body"] = t = Text()
            t += name
    for name in names:
        async with connect(server.ws_url, name) as c:
            with anyio.fail_after(10):
                await c.synced()
            clients[name] = str(c.doc.get("body", type=Text))
    assert clients == {name: name for name in names}


async def test_query_parameters_are_ignored(server) -> None:
    async with websockets.connect(server.ws_url + "/q-doc?token=abc&x=1") as ws:
        first = decode_message(await ws.recv())
        assert isinstance(first, SyncStep1)


async def test_server_greets_with_step1_and_answers_step1_with_step2(server) -> None:
    doc = Doc()
    doc["body"] = t = Text()
    t += "abc"
    async with websockets.connect(server.ws_url + "/greet") as ws:
        assert isinstance(decode_message(await ws.recv()), SyncStep1)
        await ws.send(encode_sync_update(doc.get_update()))
    async with websockets.connect(server.ws_url + "/greet") as ws:
        step1 = decode_message(await ws.recv())
        assert isinstance(step1, SyncStep1)
        await ws.send(encode_sync_step1(Doc().get_state()))
        step2 = await recv_until(ws, lambda m: isinstance(m, SyncStep2))
        fresh = Doc()
        fresh.apply_update(step2.update)
        assert str(fresh.get("body", type=Text)) == "abc"


async def test_awareness_relayed_to_all_and_removed_on_disconnect(server) -> None:
    async with connect(server.ws_url, "aw") as observer:
        with anyio.fail_after(10):
            await observer.synced()
        async with connect(server.ws_url, "aw") as alice:
            with anyio.fail_after(10):
                await alice.synced()
            alice.awareness.set_local_state({"user": {"name": "alice"}})
            await wait_for(lambda: alice.awareness.client_id in observer.remote_states)
            assert observer.remote_states[alice.awareness.client_id]["user"]["name"] == "alice"
            # A newcomer is greeted with the states the room knows.
            async with websockets.connect(server.ws_url + "/aw") as raw:
                greeting = await recv_until(raw, lambda m: isinstance(m, AwarenessUpdate))
                ids = {e.client_id for e in greeting.entries}
                assert alice.awareness.client_id in ids
        await wait_for(lambda: alice.awareness.client_id not in observer.remote_states)


async def test_awareness_echoed_to_sender(server) -> None:
    async with websockets.connect(server.ws_url + "/echo") as ws:
        await ws.recv()
        mine = encode_awareness_update([AwarenessEntry(42, 1, '{"user":"me"}')])
        await ws.send(mine)
        echoed = await recv_until(ws, lambda m: isinstance(m, AwarenessUpdate))
        assert echoed.entries == (AwarenessEntry(42, 1, '{"user":"me"}'),)


async def test_vanished_client_is_closed_and_its_awareness_removed(server_factory) -> None:
    server = server_factory("--ping-interval", "0.3", "--ping-timeout", "1.2")
    async with connect(server.ws_url, "ghost") as observer:
        with anyio.fail_after(10):
            await observer.synced()
        # A client that announces itself and then never answers anything again.
        ghost = await websockets.connect(server.ws_url + "/ghost")
        try:
            await ghost.send(encode_awareness_update([AwarenessEntry(777, 1, '{"c":1}')]))
            await wait_for(lambda: 777 in observer.awareness.states)
            started = time.monotonic()
            await wait_for(lambda: 777 not in observer.awareness.states, timeout=10)
            # Removed by the server's timeout (1.2 s), not y-protocols' 30 s outdated timer.
            assert time.monotonic() - started < 10
            code, _ = await closed_with(ghost)
            assert code == 4408
        finally:
            await ghost.close()
    # The observer answered the server's probes (it is a real Yjs client) and stayed.
    assert "conn=1 room='ghost' actor=anonymous silent" not in server.log()


async def test_healthz_counts_rooms_and_connections(server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        health = (await http.get("/healthz")).json()
        node = health.pop("node")
        assert isinstance(node, str) and node  # host-port-pid unless --node-id
        assert health == {
            "status": "ok",
            "store": "ok",
            "redis": "off",  # one node
            "rooms": 0,
            "connections": 0,
            "frame_subscribers": 0,
        }
        feed_url = server.url.replace("http://", "ws://", 1) + "/sync/v1/ws"
        async with (
            connect(server.ws_url, "h1") as a,
            connect(server.ws_url, "h2") as b,
            websockets.connect(feed_url) as feed,
        ):
            with anyio.fail_after(10):
                await a.synced()
                await b.synced()
                await feed.send('{"type": "ping"}')
                assert json.loads(await feed.recv()) == {"type": "pong", "expires_in": None}
            body = (await http.get("/healthz")).json()
            assert (body["status"], body["rooms"], body["connections"]) == ("ok", 2, 2)
            assert body["frame_subscribers"] == 1
        unknown = await http.get("/nope")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"


async def test_concurrent_first_connections_load_once(server) -> None:
    async def one(i: int, results: list) -> None:
        async with connect(server.ws_url, "stampede") as c:
            with anyio.fail_after(15):
                await c.synced()
            c.doc["fields"] = Map() if i == 0 else c.doc.get("fields", type=Map)
            results.append(i)

    results: list[int] = []
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i, results)
    assert sorted(results) == list(range(20))
    assert server.log().count("room='stampede' org=default loaded") <= 1


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xff\xff\xff", 1002),  # truncated varint
        (b"\x07", 1002),  # unknown message type
        (b"", 1002),  # empty frame
        (b"\x00\x02\x05ab", 1002),  # truncated payload
        (encode_sync_update(b"\x01\x02\x03\x04garbage"), 1007),  # update pycrdt rejects
        ("text frame", 1003),
    ],
)
async def test_bad_input_closes_only_that_connection(server, frame, code) -> None:
    async with connect(server.ws_url, "victim") as good:
        with anyio.fail_after(10):
            await good.synced()
        good.doc["body"] = text = Text()
        text += "before"
        async with websockets.connect(server.ws_url + "/victim") as bad:
            await bad.recv()
            await bad.send(frame)
            got, reason = await closed_with(bad)
        assert got == code, reason
        text += " after"
        async with connect(server.ws_url, "victim") as other:
            with anyio.fail_after(10):
                await other.synced()
            await wait_for(lambda: str(other.doc.get("body", type=Text)) == "before after")
    log = server.log()
    assert log.count(f"closing {code}:") == 1
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_oversize_message_is_refused_with_1009(server_factory) -> None:
    server = server_factory("--max-message-bytes", "2048")
    async with websockets.connect(server.ws_url + "/big") as ws:
        await ws.recv()
        await ws.send(encode_sync_update(b"\x00" * 4096))
        code, reason = await closed_with(ws)
    assert code == 1009, reason


def raw_websocket(url: str, path: str) -> socket.socket:
    """A WebSocket handshake on a plain socket with a tiny receive buffer, then nothing:
    a client that stops reading (``websockets`` keeps reading into its own buffers)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock: socket.socket) -> int | None:
    """Read server frames (unmasked) until a close frame; return its code."""
    stream = sock.makefile("rb")

    def exactly(n: int) -> bytes:
        data = stream.read(n)
        if len(data) < n:
            raise EOFError
        return data

    try:
        while True:
            first, second = exactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", exactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", exactly(8))[0]
            payload = exactly(length)
            if first & 0x0F == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    except EOFError:
        return None
    finally:
        stream.close()


async def test_slow_client_is_disconnected_with_4429(server_factory) -> None:
    server = server_factory("--send-queue-messages", "16", "--send-queue-bytes", "65536")
    slow = raw_websocket(server.url, "/yjs/firehose")
    try:
        async with connect(server.ws_url, "firehose") as writer:
            with anyio.fail_after(10):
                await writer.synced()
            writer.doc["body"] = text = Text()
            chunk = "x" * 64_000
            # Bounded: kernel buffers hold a few MB before the server's queue fills.
            for _ in range(400):
                if "slow client" in server.log():
                    break
                text += chunk
                await anyio.sleep(0.002)
            assert "slow client" in server.log()
            # The room keeps serving everyone else.
            async with connect(server.ws_url, "firehose") as check:
                with anyio.fail_after(20):
                    await check.synced()
                assert len(str(check.doc.get("body", type=Text))) == len(str(text))
        code = await anyio.to_thread.run_sync(read_close_code, slow)
        assert code == 4429
    finally:
        slow.close()


async def test_invalid_doc_name_is_refused_with_json_400(server) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(server.ws_url + "/bad%00name"):
            pass
    response = info.value.response
    assert response.status_code == 400
    assert json.loads(response.body)["error"] == "invalid_doc_name"


async def test_sigterm_closes_sockets_with_1001_and_exits_0(server) -> None:
    async with websockets.connect(server.ws_url + "/bye") as ws:
        await ws.recv()
        server.proc.send_signal(signal.SIGTERM)
        code, _ = await closed_with(ws)
    assert code == 1001
    with anyio.fail_after(10):
        while server.proc.poll() is None:
            await anyio.sleep(0.05)
    assert server.proc.returncode == 0


async def test_idle_room_unloads_after_grace_and_reloads_from_store(server_factory) -> None:
    server = server_factory("--room-idle-seconds", "0.2")
    async with connect(server.ws_url, "idle") as a:
        with anyio.fail_after(10):
            await a.synced()
        a.doc["body"] = text = Text()
        text += "persisted"
    async with httpx.AsyncClient(base_url=server.url) as http:
        with anyio.fail_after(10):
            while (await http.get("/healthz")).json()["rooms"] != 0:
                await anyio.sleep(0.05)
    async with connect(server.ws_url, "idle") as b:
        with anyio.fail_after(10):
            await b.synced()
        assert str(b.doc.get("body", type=Text)) == "persisted"
