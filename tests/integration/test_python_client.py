"""crdt_sync.client against a real server: sends only local changes, ends quietly."""

from __future__ import annotations

import signal

import anyio
import pytest
import websockets
from pycrdt import Doc, Text

from crdt_sync.client import connect
from rooms.codec import SyncUpdate, decode_message, encode_sync_update

pytestmark = pytest.mark.anyio


async def test_remote_updates_are_not_echoed_back(server) -> None:
    async with connect(server.ws_url, "echo/doc") as client:
        with anyio.fail_after(10):
            await client.synced()
        sent: list[bytes] = []
        real_send = client.websocket.send

        async def recording_send(message: bytes) -> None:
            sent.append(message)
            await real_send(message)

        client.websocket.send = recording_send
        source = Doc()
        source["body"] = text = Text()
        async with websockets.connect(server.ws_url + "/echo/doc") as writer:
            await writer.recv()
            for word in ("a", "b", "c"):
                before = source.get_state()
                text += word
                await writer.send(encode_sync_update(source.get_update(before)))
            body = client.doc.get("body", type=Text)
            with anyio.fail_after(10):
                while str(body) != "abc":
                    await anyio.sleep(0.01)
        await client.flush()
        assert not [m for m in sent if isinstance(decode_message(m), SyncUpdate)]
        body += "!"  # a local change is sent
        await client.flush()
        assert [m for m in sent if isinstance(decode_message(m), SyncUpdate)]


async def test_server_close_ends_the_session_without_cancelling_the_caller(server) -> None:
    reached_end = False
    async with connect(server.ws_url, "bye/doc") as client:
        with anyio.fail_after(10):
            await client.synced()
        client.doc["body"] = text = Text()
        server.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            await client.closed.wait()
        text += "after close"  # queued nowhere, raises nothing
        reached_end = True
    assert reached_end
    assert client.close_code == 1001
