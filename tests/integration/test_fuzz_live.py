"""A live server fed hundreds of mutated frames while a real client keeps syncing."""

from __future__ import annotations

import random

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Map, Text

from crdt_sync.client import connect
from crdt_sync.codec import (
    AwarenessEntry,
    encode_awareness_update,
    encode_query_awareness,
    encode_sync_step1,
    encode_sync_update,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DOCUMENTED = {1002, 1003, 1007, 1009}


def seed_frames() -> list[bytes]:
    doc = Doc()
    doc["body"] = text = Text("seed")
    doc["fields"] = Map({"k": 1})
    return [
        encode_sync_update(doc.get_update()),
        encode_sync_step1(doc.get_state()),
        encode_awareness_update([AwarenessEntry(99, 1, '{"u":1}')]),
        encode_query_awareness(),
        b"\x00\x01" + bytes([len(text.doc.get_update())]) + text.doc.get_update(),
    ]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.7 and data:
            del data[rng.randrange(len(data)) :]
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    return bytes(data)


async def test_mutated_frames_never_hurt_the_room(server) -> None:
    rng = random.Random(20261122)
    seeds = seed_frames()
    outcomes: dict[str, int] = {}
    async with connect(server.ws_url, "fuzz") as good:
        with anyio.fail_after(10):
            await good.synced()
        good.doc["body"] = text = Text()
        for i in range(150):
            frame = mutate(rng, rng.choice(seeds))
            async with websockets.connect(server.ws_url + "/fuzz") as bad:
                await bad.recv()
                await bad.send(frame)
                # A valid frame leaves the socket open; probe with a query-awareness.
                await bad.send(encode_query_awareness())
                try:
                    with anyio.fail_after(5):
                        while True:
                            await bad.recv()
                            if bad.state.name == "OPEN":
                                outcome = "open"
                                break
                except websockets.ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code in DOCUMENTED, (frame, exc)
                    outcome = str(exc.rcvd.code)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if i % 10 == 0:
                text += f"{i};"
        # Valid mutants edit the doc too: the good client and a newcomer must converge,
        # and every edit of the good client must be there.
        async with connect(server.ws_url, "fuzz") as check:
            with anyio.fail_after(10):
                await check.synced()
            body = check.doc.get("body", type=Text)
            with anyio.move_on_after(10):
                while str(body) != str(text):
                    await anyio.sleep(0.01)
            assert str(body) == str(text), (good.doc.get_state(), check.doc.get_state())
            for i in range(0, 150, 10):
                assert f"{i};" in str(body)
    assert outcomes.get("1002", 0) > 0 and outcomes.get("open", 0) > 0, outcomes
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
    log = server.log()
    assert "Traceback" not in log
    assert "internal error" not in log
