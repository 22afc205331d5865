"""The front door on a real server process: every route and the Yjs WebSocket refuse
bad tokens, grants are enforced per doc and mode, tenants are apart, limits trip and
recover, revocation and expiry close sessions.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Text

from crdt_sync.auth.tokens import issue_token
from rooms.codec import (
    Auth,
    AwarenessEntry,
    AwarenessUpdate,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    decode_message,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_update,
)
from tests.unit.auth_keys import OLD_SECRET, SECRET, hand_made

pytestmark = pytest.mark.anyio

ROTATED_OUT = "r" * 32 + "-retired"
WRONG = "w" * 32 + "-not-ours"
NEXT = "n" * 32 + "-next"

AUTH = ("--auth-secret", SECRET, "--auth-secret", OLD_SECRET, "--delta-min-interval-ms", "0")


def token(sub: str = "alice", org: str = "acme", docs=("**",), mode: str = "write", **kw) -> str:
    return issue_token(kw.pop("secret", SECRET), sub, org, docs, mode, **kw)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def bad_tokens() -> dict[str, str | None]:
    good = token()
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_claims = {**claims, "mode": "admin", "org": "other"}
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=")
    return {
        "missing": None,
        "forged": f"{head}.{forged_payload.decode()}.{sig}",
        "expired": token(ttl_seconds=60, now=time.time() - 3600),
        "wrong_secret": token(secret=WRONG),
        "rotated_out": token(secret=ROTATED_OUT),
        "malformed": "not-a-jwt",
        "alg_none": hand_made({"alg": "none", "typ": "JWT"}, claims),
    }


HTTP_ROUTES = [
    ("GET", "/docs", None),
    ("GET", "/docs/issue/1", None),
    ("GET", "/docs/issue/1/update", None),
    ("POST", "/docs/issue/1/update", b"\x00\x00"),
    ("DELETE", "/docs/issue/1", None),
    ("POST", "/sync/v1/mutations", {"mutations": [{"t": "a", "id": "1", "op": "i", "p": {}}]}),
    ("GET", "/sync/v1/delta", None),
    ("GET", "/sync/v1/records", None),
    ("GET", "/sync/v1/presence/issue/1", None),
    ("GET", "/metrics", None),
    ("POST", "/admin/revoke", {"sub": "alice"}),
]


async def call(http: httpx.AsyncClient, method: str, path: str, body, headers=None):
    headers = dict(headers or {})
    if isinstance(body, bytes):
        return await http.request(method, path, content=body, headers=headers)
    if body is not None:
        return await http.request(method, path, json=body, headers=headers)
    return await http.request(method, path, headers=headers)


async def rooms(http: httpx.AsyncClient) -> int:
    return (await http.get("/healthz")).json()["rooms"]


async def closed_with(ws, timeout: float = 10.0) -> tuple[int, str, list]:
    """Read until the server closes; return (code, reason, messages seen before)."""
    seen = []
    with anyio.fail_after(timeout):
        try:
            while True:
                seen.append(decode_message(await ws.recv()))
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason, seen


async def recv_until(ws, predicate, timeout: float = 10.0):
    with anyio.fail_after(timeout):
        while True:
            message = decode_message(await ws.recv())
            if predicate(message):
                return message


def text_update(text: str, client_id: int) -> bytes:
    doc = Doc(client_id=client_id)
    doc["body"] = body = Text()
    body += text
    return doc.get_update()


async def test_bad_tokens_are_refused_on_every_http_route(server_factory) -> None:
    server = server_factory(*AUTH)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for name, bad in bad_tokens().items():
            for method, path, body in HTTP_ROUTES:
                response = await call(http, method, path, body, bad and bearer(bad))
                assert response.status_code == 401, (name, method, path, response.text)
                assert response.json()["error"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")
            # the same through ?token= and the event stream
            if bad is not None:
                response = await http.get("/docs", params={"token": bad})
                assert response.status_code == 401, name
            response = await http.get("/sync/v1/events", headers=bad and bearer(bad))
            assert response.status_code == 401, name
        # Public routes need no token.
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path
        assert await rooms(http) == 0
    log = server.log()
    assert SECRET not in log and OLD_SECRET not in log
    for bad in bad_tokens().values():
        if bad is not None:
            assert bad not in log
    audit = [line for line in log.splitlines() if "crdt_sync.audit" in line]
    assert len(audit) >= len(bad_tokens()) * len(HTTP_ROUTES)
    assert all("peer=127.0.0.1" in line for line in audit)


async def test_rotation_accepts_every_listed_secret(server_factory) -> None:
    server = server_factory(*AUTH)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for secret in (SECRET, OLD_SECRET):
            response = await http.get("/docs", headers=bearer(token(secret=secret)))
            assert response.status_code == 200, response.text


async def test_grants_are_enforced_per_doc_and_mode(server_factory) -> None:
    server = server_factory(*AUTH)
    writer = bearer(token(docs=("issue/*",), mode="write"))
    reader = bearer(token(docs=("issue/*",), mode="read"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        update = text_update("hello", 11)
        assert (
            await http.post("/docs/issue/1/update", content=update, headers=writer)
        ).status_code == 200
        assert (await http.get("/docs/issue/1", headers=reader)).status_code == 200
        for method, path, body, who in [
            ("POST", "/docs/issue/1/update", update, reader),  # read token, write route
            ("DELETE", "/docs/issue/1", None, reader),
            ("GET", "/docs/wiki/1", None, writer),  # outside the grant
            ("POST", "/docs/wiki/1/update", update, writer),
            ("GET", "/sync/v1/presence/wiki/1", None, writer),
            ("POST", "/sync/v1/mutations", HTTP_ROUTES[5][2], reader),
            ("GET", "/metrics", None, writer),  # admin only
            ("POST", "/admin/revoke", {"sub": "x"}, writer),
        ]:
            response = await call(http, method, path, body, who)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == "forbidden"
        # One mutation outside the grant is refused alone; the other is applied.
        response = await http.post(
            "/sync/v1/mutations",
            json={
                "mutations": [
                    {"t": "issue", "id": "2", "op": "i", "p": {"x": 1}},
                    {"t": "wiki", "id": "2", "op": "i", "p": {"x": 1}},
                ]
            },
            headers=writer,
        )
        results = response.json()["results"]
        assert [r["status"] for r in results] == [201, 403]
        assert results[1]["error"] == "forbidden"
        admin = bearer(token(sub="root", mode="admin"))
        names = [d["name"] for d in (await http.get("/docs", headers=admin)).json()["docs"]]
        assert "wiki/2" not in names and "issue/2" in names
        # GET /docs, delta and records show only what the grant covers.
        mine = bearer(token(docs=("wiki/*",), mode="write"))
        assert (
            await http.post(
                "/sync/v1/mutations",
                json={"mutations": [{"t": "wiki", "id": "3", "op": "i", "p": {"y": 2}}]},
                headers=mine,
            )
        ).json()["results"][0]["status"] == 201
        listed = (await http.get("/docs", headers=reader)).json()["docs"]
        assert {d["name"] for d in listed} == {"issue/1", "issue/2"}
        frames = (await http.get("/sync/v1/delta", headers=reader)).json()["frames"]
        assert frames and {f["t"] for f in frames} == {"issue"}
        records = (await http.get("/sync/v1/records", headers=mine)).json()["records"]
        assert [(r["t"], r["id"]) for r in records] == [("wiki", "3")]


async def test_same_doc_name_in_two_orgs_is_two_docs(server_factory) -> None:
    server = server_factory(*AUTH)
    acme = bearer(token(org="acme"))
    globex = bearer(token(org="globex"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await http.post("/docs/notes/update", content=text_update("acme", 1), headers=acme)
        await http.post("/docs/notes/update", content=text_update("globex", 2), headers=globex)
        a = (await http.get("/docs/notes", headers=acme)).json()["content"]
        g = (await http.get("/docs/notes", headers=globex)).json()["content"]
        assert a == {"body": "acme"} and g == {"body": "globex"}
        for org, headers in (("acme", acme), ("globex", globex)):
            await http.post(
                "/sync/v1/mutations",
                json={"mutations": [{"t": "task", "id": "1", "op": "i", "p": {"org": org}}]},
                headers=headers,
            )
        # (the sid sequence as each org sees it is the tenantstore's: not checked here)
        for org, headers in (("acme", acme), ("globex", globex)):
            records = (await http.get("/sync/v1/records", headers=headers)).json()["records"]
            assert [r["fields"] for r in records] == [{"org": org}]
            presence = await http.get("/sync/v1/presence/task/1", headers=headers)
            assert presence.status_code == 200
        frames = (await http.get("/sync/v1/delta", headers=acme)).json()["frames"]
        assert [f["p"] for f in frames] == [{"org": "acme"}]
        # a delete in one org leaves the other's doc alone
        assert (await http.delete("/docs/notes", headers=acme)).status_code == 200
        assert (await http.get("/docs/notes", headers=acme)).status_code == 404
        assert (await http.get("/docs/notes", headers=globex)).status_code == 200
        # the Yjs socket of each org syncs its own doc
        async with websockets.connect(f"{server.ws_url}/notes?token={token(org='globex')}") as ws:
            step1 = await recv_until(ws, lambda m: isinstance(m, SyncStep1))
            assert step1.state_vector != b"\x00"
        metrics = await http.get("/metrics", headers=bearer(token(org="acme", mode="admin")))
        assert metrics.status_code == 200
        assert "notes" not in metrics.text and "globex" not in metrics.text


async def test_yjs_refusals_close_4401_and_4403_before_loading_anything(server_factory) -> None:
    server = server_factory(*AUTH)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for name, bad in bad_tokens().items():
            url = f"{server.ws_url}/issue/1" + (f"?token={bad}" if bad else "")
            async with websockets.connect(url) as ws:
                code, _, seen = await closed_with(ws)
            assert code == 4401, name
            assert seen == []
        # the token as a bearer subprotocol: the accept echoes the real protocol
        bad = bad_tokens()["forged"]
        async with websockets.connect(
            f"{server.ws_url}/issue/1", subprotocols=["crdt-sync", f"bearer.{bad}"]
        ) as ws:
            assert ws.subprotocol == "crdt-sync"
            code, _, _ = await closed_with(ws)
            assert code == 4401
        # a doc outside the grant: the y-protocols auth message first, then 4403
        outside = token(docs=("issue/*",), mode="write")
        async with websockets.connect(f"{server.ws_url}/wiki/1?token={outside}") as ws:
            code, _, seen = await closed_with(ws)
        assert code == 4403
        assert seen == [Auth(0, "permission denied")] or (
            len(seen) == 1 and isinstance(seen[0], Auth)
        )
        assert await rooms(http) == 0
        docs = (await http.get("/docs", headers=bearer(token(mode="admin")))).json()["docs"]
        assert docs == []
        # and a good token gets in, with the bearer subprotocol echoed
        good = token(docs=("issue/*",))
        async with websockets.connect(
            f"{server.ws_url}/issue/1", subprotocols=["crdt-sync", f"bearer.{good}"]
        ) as ws:
            assert ws.subprotocol == "crdt-sync"
            await recv_until(ws, lambda m: isinstance(m, SyncStep1))
        assert await rooms(http) == 1


async def test_read_only_client_is_seen_but_its_updates_go_nowhere(server_factory) -> None:
    server = server_factory(*AUTH)
    url = f"{server.ws_url}/issue/7"
    async with (
        websockets.connect(f"{url}?token={token(sub='wendy')}") as writer,
        websockets.connect(f"{url}?token={token(sub='rita', mode='read')}") as reader,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await recv_until(writer, lambda m: isinstance(m, SyncStep1))
        await recv_until(reader, lambda m: isinstance(m, SyncStep1))
        # the reader's update and a step 2 with content: dropped
        await reader.send(encode_sync_update(text_update("from the reader", 99)))
        await reader.send(bytes([0, 1]) + _var_bytes(text_update("step2 edit", 98)))
        # its awareness is relayed (viewers show up)
        state = json.dumps({"user": {"name": "rita"}})
        await reader.send(encode_awareness_update([AwarenessEntry(4242, 1, state)]))
        seen = await recv_until(
            writer,
            lambda m: (
                isinstance(m, AwarenessUpdate) and any(e.client_id == 4242 for e in m.entries)
            ),
        )
        assert seen is not None
        # the writer's edit still reaches the reader: its connection stays open
        await writer.send(encode_sync_update(text_update("from the writer", 1)))
        got = await recv_until(reader, lambda m: isinstance(m, SyncUpdate))
        doc = Doc()
        doc.apply_update(got.update)
        assert str(doc.get("body", type=Text)) == "from the writer"
        # nothing of the reader's reached the writer or the store
        await writer.send(encode_sync_step1(b"\x00"))
        answer = await recv_until(writer, lambda m: isinstance(m, SyncStep2))
        full = Doc()
        full.apply_update(answer.update)
        assert str(full.get("body", type=Text)) == "from the writer"
        admin = bearer(token(sub="root", mode="admin"))
        stored = (await http.get("/docs/issue/7", headers=admin)).json()["content"]
        assert stored == {"body": "from the writer"}
        metrics = (await http.get("/metrics", headers=admin)).text
        assert re.search(r"crdt_sync_readonly_updates_refused_total 2\.0", metrics), metrics
    lines = [ln for ln in server.log().splitlines() if "read-only grant" in ln]
    assert len(lines) == 1 and "rita" in lines[0]


def _var_bytes(data: bytes) -> bytes:
    out = bytearray()
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


async def test_token_expiry_closes_the_session_with_4401(server_factory) -> None:
    from crdt_sync.client import connect

    server = server_factory(*AUTH)
    short = token(ttl_seconds=2)
    local = Doc(client_id=314)
    local["body"] = body = Text()
    body += "typed before expiry. "
    started = time.monotonic()
    async with websockets.connect(f"{server.ws_url}/issue/1?token={short}") as ws:
        await recv_until(ws, lambda m: isinstance(m, SyncStep1))
        await ws.send(encode_sync_update(local.get_update()))
        code, reason, _ = await closed_with(ws, timeout=10)
    assert code == 4401 and "expired" in reason
    assert time.monotonic() - started < 5
    # offline edit, then a reconnect with a fresh token: nothing is lost
    body += "typed while disconnected."
    async with (
        connect(server.ws_url, "issue/1", local, token=token()) as client,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        with anyio.fail_after(10):
            await client.synced()
        want = {"body": "typed before expiry. typed while disconnected."}
        with anyio.fail_after(10):
            while (await http.get("/docs/issue/1", headers=bearer(token()))).json().get(
                "content"
            ) != want:
                await anyio.sleep(0.05)


async def test_revoke_closes_matching_sessions_within_one_second(server_factory) -> None:
    server = server_factory(*AUTH)
    url = f"{server.ws_url}/issue/1"
    admin = bearer(token(sub="root", mode="admin"))
    async with (
        websockets.connect(f"{url}?token={token(sub='mallory')}") as mallory,
        websockets.connect(f"{url}?token={token(sub='bob')}") as bob,
        websockets.connect(f"{url}?token={token(sub='mallory', org='globex')}") as other_org,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        for ws in (mallory, bob, other_org):
            await recv_until(ws, lambda m: isinstance(m, SyncStep1))
        started = time.monotonic()
        response = await http.post("/admin/revoke", json={"sub": "mallory"}, headers=admin)
        assert response.json() == {"revoked": 1}
        code, _, _ = await closed_with(mallory, timeout=1.0)
        assert code == 4401
        assert time.monotonic() - started < 1.0
        # bob and the other org's mallory are still served
        for ws in (bob, other_org):
            await ws.send(encode_sync_step1(b"\x00"))
            await recv_until(ws, lambda m: isinstance(m, SyncStep2))
        # an admin of acme cannot revoke in globex
        response = await http.post("/admin/revoke", json={"org": "globex"}, headers=admin)
        assert response.status_code == 403
        response = await http.post("/admin/revoke", json={"doc": "issue/1"}, headers=admin)
        assert response.json() == {"revoked": 1}
        code, _, _ = await closed_with(bob, timeout=1.0)
        assert code == 4401
        assert (await http.post("/admin/revoke", json={}, headers=admin)).status_code == 400


async def test_http_rate_limit_trips_and_recovers_per_actor(server_factory) -> None:
    server = server_factory(*AUTH, "--rate-limit-http-requests", "5", "--rate-limit-window", "1")
    alice = bearer(token(sub="alice"))
    bob = bearer(token(sub="bob"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for _ in range(5):
            assert (await http.get("/docs", headers=alice)).status_code == 200
        refused = await http.get("/docs", headers=alice)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == "too_many_requests"
        # another actor keeps working
        for _ in range(3):
            assert (await http.get("/docs", headers=bob)).status_code == 200
        # alice recovers once the window has passed (bounded wait, polled)
        with anyio.fail_after(5):
            while (await http.get("/docs", headers=alice)).status_code == 429:
                await anyio.sleep(0.1)


async def test_connection_and_message_limits_close_4429(server_factory) -> None:
    server = server_factory(
        *AUTH,
        "--max-connections-per-actor",
        "1",
        "--rate-limit-ws-messages",
        "5",
        "--rate-limit-window",
        "60",
    )
    url = f"{server.ws_url}/issue/1?token={token(sub='carol')}"
    async with websockets.connect(url) as first:
        await recv_until(first, lambda m: isinstance(m, SyncStep1))
        async with websockets.connect(url) as second:
            code, _, _ = await closed_with(second)
        assert code == 4429
        # another actor is not limited by carol's connections
        async with websockets.connect(f"{server.ws_url}/issue/1?token={token(sub='dave')}") as d:
            await recv_until(d, lambda m: isinstance(m, SyncStep1))
        for _ in range(6):
            await first.send(encode_sync_step1(b"\x00"))
        code, reason, _ = await closed_with(first)
        assert code == 4429 and "messages" in reason
    # the lease was given back with the connection: carol may connect again
    with anyio.fail_after(5):
        while True:
            async with websockets.connect(url) as again:
                message = await again.recv()
                if decode_message(message) is not None and isinstance(
                    decode_message(message), SyncStep1
                ):
                    break


async def test_max_doc_bytes_refuses_a_write_and_keeps_the_doc(server_factory) -> None:
    server = server_factory(*AUTH, "--max-doc-bytes", "2048")
    headers = bearer(token())
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        small = text_update("small", 5)
        assert (
            await http.post("/docs/d/update", content=small, headers=headers)
        ).status_code == 200
        big = text_update("x" * 4000, 6)
        response = await http.post("/docs/d/update", content=big, headers=headers)
        assert response.status_code == 413 and response.json()["error"] == "doc_too_large"
        assert (await http.get("/docs/d", headers=headers)).json()["content"] == {"body": "small"}
        async with websockets.connect(f"{server.ws_url}/d?token={token()}") as ws:
            await recv_until(ws, lambda m: isinstance(m, SyncStep1))
            await ws.send(encode_sync_update(big))
            code, _, _ = await closed_with(ws)
        assert code == 4413
        assert (await http.get("/docs/d", headers=headers)).json()["content"] == {"body": "small"}
        response = await http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "r", "id": "1", "op": "i", "p": {"x": "y" * 4000}}]},
            headers=headers,
        )
        result = response.json()["results"][0]
        assert result["status"] == 413 and result["error"] == "doc_too_large"


def serve_exit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "crdt_sync", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--require-auth",), "--require-auth"),
        (("--host", "0.0.0.0"), "--allow-open"),
        (("--auth-secret", "short"), "--auth-secret"),
        (("--auth-jwks", "/nonexistent/jwks.json"), "--auth-jwks"),
        (("--auth-webhook", "ftp://x"), "--auth-webhook"),
        (("--allowed-origins", "not an origin"), "--allowed-origins"),
    ],
)
async def test_unsafe_or_bad_auth_config_refuses_to_start(tmp_path, args, needle) -> None:
    done = serve_exit("--db", str(tmp_path / "x.db"), *args)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


async def test_open_server_warns_once(server_factory) -> None:
    server = server_factory()
    warnings = [ln for ln in server.log().splitlines() if "auth is OFF" in ln]
    assert len(warnings) == 1


async def test_jwks_keys_are_matched_by_kid(server_factory, tmp_path) -> None:
    from tests.unit.auth_keys import KeyPair, claims, jwks

    ours, stranger = KeyPair("ec", "k1"), KeyPair("ec", "k2")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ours)))
    server = server_factory("--auth-jwks", str(path))
    good = ours.sign(claims(docs=["**"]))
    wrong_kid = stranger.sign(claims(docs=["**"]))
    forged_kid = stranger.sign(claims(docs=["**"]), kid="k1")  # claims k1, signed by k2
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/docs", headers=bearer(good))).status_code == 200
        for bad in (wrong_kid, forged_kid):
            response = await http.get("/docs", headers=bearer(bad))
            assert response.status_code == 401, response.text
            async with websockets.connect(f"{server.ws_url}/issue/1?token={bad}") as ws:
                code, _, _ = await closed_with(ws)
            assert code == 4401
        assert await rooms(http) == 0


async def test_repeated_auth_failures_from_one_address_are_refused_unasked(
    server_factory,
) -> None:
    server = server_factory(*AUTH, "--rate-limit-http-requests", "3", "--rate-limit-window", "2")
    forged = bad_tokens()["forged"]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        statuses = [(await http.get("/docs", headers=bearer(forged))).status_code for _ in range(5)]
        assert statuses[:4] == [401] * 4 and statuses[4] == 429
        # blocked: not even a good token is checked from this address until it passes
        blocked = await http.get("/docs", headers=bearer(token()))
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
        with anyio.fail_after(6):
            while (await http.get("/docs", headers=bearer(token()))).status_code == 429:
                await anyio.sleep(0.1)
