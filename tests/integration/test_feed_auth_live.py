"""The frame feed behind the front door, on a real server with ``--auth-secret``:
cross-org isolation of WS, SSE and presence; grant-filtered frames; in-band renewal
keeps the cursor; expiry in session closes 4401; ``/admin/revoke`` closes the feed."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest
import websockets

from crdt_sync.auth.tokens import issue_token

pytestmark = pytest.mark.anyio

SECRET = "f" * 40
FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50", "--auth-secret", SECRET)
TIMEOUT = 10


def token(sub: str = "alice", org: str = "acme", docs=("issue/*",), mode="read", ttl=600) -> str:
    return issue_token(SECRET, sub, org, docs, mode, ttl_seconds=ttl)


def feed_url(server, tok: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": tok, **params}.items())
    return server.url.replace("http://", "ws://", 1) + f"/sync/v1/ws?{query}"


async def mutate(server, tok: str, *mutations: dict) -> list[dict]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post(
            "/sync/v1/mutations",
            json={"mutations": list(mutations)},
            headers={"authorization": f"Bearer {tok}"},
        )
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def insert(server, org: str, t: str, id: str, **p: Any) -> int:
    writer = token("writer", org, ("**",), "write")
    [result] = await mutate(server, writer, {"t": t, "id": id, "op": "i", "p": p or {"x": 1}})
    return result["sid"]


async def next_of(ws, kind: str | None = None) -> Any:
    """The next frames array (``kind`` None) or object of type ``kind``."""
    while True:
        message = json.loads(await ws.recv())
        if kind is None and isinstance(message, list):
            return message
        if kind is not None and isinstance(message, dict) and message.get("type") == kind:
            return message


async def closed_with(ws) -> tuple[int, list[Any]]:
    received = []
    try:
        while True:
            received.append(json.loads(await ws.recv()))
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code, received


async def test_ws_feed_sends_only_its_orgs_covered_frames(server_factory) -> None:
    server = server_factory(*FAST)
    with anyio.fail_after(TIMEOUT * 2):
        # acme's frames first: the store's per-org oldest bound is its first sid - 1
        # (sids are global), so a later tenant's ``since=0`` would read as too old.
        mine = await insert(server, "acme", "issue", "1")
        await insert(server, "acme", "secret", "1")
        await insert(server, "other", "issue", "1")  # same name, other tenant
        async with (
            websockets.connect(feed_url(server, token(), since=0)) as alice,
            websockets.connect(feed_url(server, token("bob", "other"))) as bob,
        ):
            assert [(f["sid"], f["t"], f["id"]) for f in await next_of(alice)] == [
                (mine, "issue", "1")
            ]
            await alice.send(json.dumps({"type": "ping"}))
            await next_of(alice, "pong")  # caught up and live
            await bob.send(json.dumps({"type": "ping"}))
            await next_of(bob, "pong")
            theirs = await insert(server, "other", "issue", "2")
            await insert(server, "acme", "secret", "2")
            live = await insert(server, "acme", "issue", "2")
            assert [f["sid"] for f in await next_of(alice)] == [live]
            assert [(f["sid"], f["t"]) for f in await next_of(bob)] == [(theirs, "issue")]


async def test_sse_feed_sends_only_its_orgs_covered_frames(server_factory) -> None:
    server = server_factory(*FAST)
    with anyio.fail_after(TIMEOUT * 2):
        await insert(server, "acme", "secret", "1")
        mine = await insert(server, "acme", "issue", "1", title="ours")
        await insert(server, "other", "issue", "1")
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            headers = {"authorization": f"Bearer {token()}"}
            params = {"since": "0"}
            async with http.stream(
                "GET", "/sync/v1/events", params=params, headers=headers
            ) as response:
                assert response.status_code == 200
                text = ""
                chunks = response.aiter_text()
                async for chunk in chunks:
                    text += chunk
                    if f"id: {mine}\n" in text:
                        break
                live = await insert(server, "acme", "issue", "2")
                await insert(server, "other", "issue", "2")
                async for chunk in chunks:
                    text += chunk
                    if f"id: {live}\n" in text:
                        break
        ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
        assert ids == [str(mine), str(live)]
        assert "secret" not in text


async def test_presence_is_scoped_to_the_org(server_factory) -> None:
    server = server_factory(*FAST)
    with anyio.fail_after(TIMEOUT * 2):
        await insert(server, "acme", "issue", "1")  # a view is of a record that exists
        async with (
            websockets.connect(feed_url(server, token())) as alice,
            websockets.connect(feed_url(server, token("bob", "other"))) as bob,
        ):
            await alice.send(json.dumps({"type": "view", "t": "issue", "id": "1", "state": {}}))
            seen = await next_of(alice, "presence")
            assert [p["state"]["actor"] for p in seen["present"]] == ["alice"]
            # The same record name in another org: alice is not there.
            await bob.send(json.dumps({"type": "watch", "t": "issue", "id": "1"}))
            assert (await next_of(bob, "presence"))["present"] == []
            # Outside the grant: forbidden, the feed stays open.
            await alice.send(json.dumps({"type": "view", "t": "secret", "id": "1"}))
            error = await next_of(alice, "error")
            assert error["error"] == "forbidden"
            await alice.send(json.dumps({"type": "ping"}))
            assert (await next_of(alice, "pong"))["expires_in"] > 500


async def test_in_band_renewal_keeps_the_cursor_past_the_first_expiry(server_factory) -> None:
    server = server_factory(*FAST)
    with anyio.fail_after(TIMEOUT * 2):
        first = await insert(server, "acme", "issue", "1")
        short = token(ttl=2)
        expires = time.time() + 2
        async with websockets.connect(feed_url(server, short, since=0)) as ws:
            assert [f["sid"] for f in await next_of(ws)] == [first]
            await ws.send(json.dumps({"type": "auth", "token": token(ttl=600)}))
            answer = await next_of(ws, "auth")
            assert answer["ok"] is True and answer["expires_in"] >= 590
            # Wait out the first token (a wall-clock deadline, not a timing assertion).
            await anyio.sleep(max(0.0, expires - time.time()) + 0.5)
            second = await insert(server, "acme", "issue", "2")
            assert [f["sid"] for f in await next_of(ws)] == [second]
            await ws.send(json.dumps({"type": "ping"}))
            assert (await next_of(ws, "pong"))["expires_in"] >= 590


async def test_in_band_token_of_another_org_closes_4403(server_factory) -> None:
    server = server_factory(*FAST)
    with anyio.fail_after(TIMEOUT):
        async with websockets.connect(feed_url(server, token())) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token(org="other")}))
            code, received = await closed_with(ws)
    assert code == 4403 and received[-1]["error"] == "forbidden"


async def test_expiry_in_session_closes_4401(server_factory) -> None:
    server = server_factory(*FAST)
    with anyio.fail_after(TIMEOUT):
        async with websockets.connect(feed_url(server, token(ttl=1))) as ws:
            code, received = await closed_with(ws)
    assert code == 4401
    assert received[-1]["type"] == "error" and received[-1]["error"] == "token_expired"


async def test_revoke_closes_the_ws_and_sse_feeds_within_a_second(server_factory) -> None:
    server = server_factory(*FAST)
    admin = token("root", "acme", ("**",), "admin")
    with anyio.fail_after(TIMEOUT * 2):
        async with (
            websockets.connect(feed_url(server, token())) as ws,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            headers = {"authorization": f"Bearer {token()}"}
            async with http.stream("GET", "/sync/v1/events", headers=headers) as stream:
                chunks = stream.aiter_text()
                assert "retry:" in await chunks.__anext__()
                await ws.send(json.dumps({"type": "ping"}))
                await next_of(ws, "pong")
                response = await http.post(
                    "/admin/revoke",
                    json={"sub": "alice"},
                    headers={"authorization": f"Bearer {admin}"},
                )
                assert response.status_code == 200 and response.json()["revoked"] == 2
                with anyio.fail_after(1.0):
                    code, received = await closed_with(ws)
                    rest = "".join([chunk async for chunk in chunks])
    assert code == 4401 and received[-1]["error"] == "revoked"
    assert "closed_4401" in rest
