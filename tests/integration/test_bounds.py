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

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")


def ws_base(server: Any) -> str:
    return server.url.replace("http://", "ws://", 1)


async def write_frames(http: httpx.AsyncClient, count: int, start: int, size: int) -> None:
    """``count`` frames of about ``size`` bytes each (updates of one record)."""
    done = 0
    while done < count:
        n = min(500, count - done)
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
        async with websockets.connect(
            ws_base(server) + "/sync/v1/ws?since=0", sock=sock, max_size=None, max_queue=1
        ) as ws:
            first = json.loads(await ws.recv())
            assert first[0]["sid"] == 1
            # The reader pauses; the log moves on and is trimmed past all it holds.
            await write_frames(http, retention + retention // 10 + 50, retention, 4000)
            with anyio.fail_after(30):
                while True:
                    probe = await http.get("/sync/v1/delta", params={"since": retention})
                    if probe.status_code == 410:
                        break
                    await anyio.sleep(0.05)
            gone = probe.json()
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
