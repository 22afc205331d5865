"""Issue 11 on the SyncFrame feed (``/sync/v1/ws``, SSE), against a real server:
expiry in session (4401 at ``exp``), in-band ``{"type": "auth", "token"}`` renewal that
keeps the cursor, ``expires_in`` on the keepalive, and frames filtered by the grant.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import jwt
import pytest
import websockets

from tests.integration.auth_support import SECRET, bearer, token, ws_base

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "20")


def exp_of(tok: str) -> int:
    return jwt.decode(tok, options={"verify_signature": False})["exp"]


async def insert(http: httpx.AsyncClient, t: str, id: str, tok: str) -> int:
    body = {"mutations": [{"t": t, "id": id, "op": "i", "p": {"n": id}}]}
    response = await http.post("/sync/v1/mutations", json=body, headers=bearer(tok))
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["sid"]


class Feed:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self.events: list[dict] = []

    async def next_event(self, kind: str, timeout: float = 5.0) -> dict:
        with anyio.fail_after(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                if isinstance(message, list):
                    self.frames += message
                    continue
                self.events.append(message)
                if message.get("type") == kind:
                    return message

    async def frame(self, sid: int, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while not any(f["sid"] >= sid for f in self.frames):
                message = json.loads(await self.ws.recv())
                if isinstance(message, list):
                    self.frames += message
                else:
                    self.events.append(message)

    async def closed(self, timeout: float) -> tuple[int, float]:
        """The close code and the wall-clock time it came."""
        with anyio.fail_after(timeout):
            try:
                while True:
                    message = json.loads(await self.ws.recv())
                    if isinstance(message, dict):
                        self.events.append(message)
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame"
                return exc.rcvd.code, time.time()


async def test_frame_feed_closes_4401_at_exp_after_a_token_expired_error(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    short = token(mode="read", ttl=3)
    async with websockets.connect(ws_base(server) + "/sync/v1/ws?token=" + short) as ws:
        feed = Feed(ws)
        await ws.send(json.dumps({"type": "ping"}))
        pong = await feed.next_event("pong")
        assert 0 < pong["expires_in"] <= 3, pong
        code, at = await feed.closed(timeout=8)
    assert code == 4401
    assert exp_of(short) - 0.5 <= at <= exp_of(short) + 1.5, (at, exp_of(short))
    assert any(e.get("error") == "token_expired" for e in feed.events), feed.events


async def test_in_band_auth_renews_the_session_and_keeps_the_cursor(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    writer = token(sub="writer", mode="write")
    short = token(sub="reader", mode="read", ttl=3)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        first = await insert(http, "task", "before", writer)
        url = ws_base(server) + "/sync/v1/ws?since=0&token=" + short
        async with websockets.connect(url) as ws:
            feed = Feed(ws)
            await feed.frame(first)
            fresh = token(sub="reader", mode="read", ttl=600)
            await ws.send(json.dumps({"type": "auth", "token": fresh}))
            answer = await feed.next_event("auth")
            assert answer["ok"] is True and 590 <= answer["expires_in"] <= 600, answer
            # past the first token's exp: still open, and the keepalive says so
            with anyio.fail_after(8):
                while time.time() < exp_of(short) + 1:
                    await anyio.sleep(0.1)
            await ws.send(json.dumps({"type": "ping"}))
            pong = await feed.next_event("pong")
            assert pong["expires_in"] > 500, pong
            second = await insert(http, "task", "after", writer)
            await feed.frame(second)
        sids = [f["sid"] for f in feed.frames]
        assert sids == [first, second], f"cursor lost: {sids}"


@pytest.mark.parametrize(
    ("renewal", "code"),
    [
        (lambda: token(sub="someone-else", mode="read"), 4403),
        (lambda: token(sub="reader", org="orgb", mode="read"), 4403),
        (lambda: "garbage", 4401),
        (lambda: token(sub="reader", mode="read", secret="x" * 40), 4401),
    ],
    ids=["other_actor", "other_org", "garbage", "wrong_secret"],
)
async def test_in_band_auth_with_a_foreign_or_bad_token_closes(
    server_factory, renewal: Any, code: int
) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    url = ws_base(server) + "/sync/v1/ws?token=" + token(sub="reader", mode="read")
    async with websockets.connect(url) as ws:
        feed = Feed(ws)
        await ws.send(json.dumps({"type": "auth", "token": renewal()}))
        got, _ = await feed.closed(timeout=5)
    assert got == code, (got, feed.events)


async def test_frame_feed_sends_only_frames_the_grant_covers(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    writer = token(sub="writer", mode="write")
    tasks_only = token(sub="reader", docs=("task/*",), mode="read")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        hidden = await insert(http, "secret", "1", writer)
        shown = await insert(http, "task", "1", writer)
        async with websockets.connect(
            ws_base(server) + "/sync/v1/ws?since=0&token=" + tasks_only
        ) as ws:
            feed = Feed(ws)
            await feed.frame(shown)
            hidden_live = await insert(http, "secret", "2", writer)
            shown_live = await insert(http, "task", "2", writer)
            await feed.frame(shown_live)
            await ws.send(json.dumps({"type": "view", "t": "secret", "id": "1"}))
            refused = await feed.next_event("error")
            assert refused["error"] == "forbidden", refused
            await ws.send(json.dumps({"type": "ping"}))
            await feed.next_event("pong")  # the feed stays open
        assert [f["t"] for f in feed.frames] == ["task", "task"], feed.frames
        assert hidden not in [f["sid"] for f in feed.frames]
        assert hidden_live not in [f["sid"] for f in feed.frames]
        # SSE: the same filter
        seen: list[str] = []
        with anyio.fail_after(10):
            async with http.stream(
                "GET", "/sync/v1/events", params={"since": 0}, headers=bearer(tasks_only)
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    seen.append(line)
                    if f'"sid": {shown_live}' in line or f'"sid":{shown_live}' in line:
                        break
        assert '"secret"' not in "\n".join(seen), seen


async def test_sse_stream_ends_at_exp_with_token_expired(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    short = token(mode="read", ttl=3)
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        with anyio.fail_after(8):
            async with http.stream("GET", "/sync/v1/events", headers=bearer(short)) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    lines.append(line)
        ended = time.time()
    assert exp_of(short) - 0.5 <= ended <= exp_of(short) + 1.5, (ended, exp_of(short))
    assert any("token_expired" in line for line in lines), lines


async def test_read_token_viewer_is_present_to_others(server_factory) -> None:
    """Viewers show up: a read token may publish its presence on the feed."""
    server = server_factory("--auth-secret", SECRET, *FAST)
    writer = token(sub="writer", mode="write")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await insert(http, "task", "1", writer)
        url = ws_base(server) + "/sync/v1/ws?token=" + token(sub="viewer", mode="read")
        async with websockets.connect(url) as ws:
            view = {"type": "view", "t": "task", "id": "1", "state": {"name": "viewer"}}
            await ws.send(json.dumps(view))
            with anyio.fail_after(5):
                while True:
                    present = await http.get("/sync/v1/presence/task/1", headers=bearer(writer))
                    assert present.status_code == 200, present.text
                    if "viewer" in present.text:
                        break
                    await anyio.sleep(0.05)
