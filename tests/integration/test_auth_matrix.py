"""Issue 11, the cross-tenant matrix, against a real ``crdt-sync serve --auth-secret``.

Every HTTP route, both WebSockets (``/yjs/<doc>``, ``/sync/v1/ws``) and the SSE feed
are tried with every kind of bad token (401 / close 4401), with a token whose grant
does not cover the doc (403 / 4403), with a read token that tries to write (403),
and across two orgs that use the same doc names: org B never sees a byte of org A's
docs, records, frames or presence.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from pycrdt import Doc, Text

from crdt_sync.client import connect
from tests.integration.auth_support import (
    NEW_SECRET,
    OPEN,
    SECRET,
    RsaKeys,
    bad_tokens,
    bearer,
    sse_status,
    token,
    wait_for,
    ws_base,
    ws_outcome,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "20")
MUTATION = {"mutations": [{"t": "task", "id": "1", "op": "u", "p": {"title": "overwritten"}}]}


def doc_update(text: str) -> bytes:
    doc = Doc()
    doc["body"] = Text(text)
    return doc.get_update()


# (label, method, path, request kwargs): every HTTP route of the app that needs a token.
ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("list docs", "GET", "/docs", {}),
    ("get doc", "GET", "/docs/task/1", {}),
    ("get doc update", "GET", "/docs/task/1/update", {}),
    (
        "post doc update",
        "POST",
        "/docs/task/1/update",
        {
            "content": doc_update("overwritten"),
            "headers": {"content-type": "application/octet-stream"},
        },
    ),
    ("delete doc", "DELETE", "/docs/task/1", {}),
    ("mutations", "POST", "/sync/v1/mutations", {"json": MUTATION}),
    ("delta", "GET", "/sync/v1/delta", {"params": {"since": 0}}),
    ("records", "GET", "/sync/v1/records", {}),
    ("presence", "GET", "/sync/v1/presence/task/1", {}),
    ("metrics", "GET", "/metrics", {}),
    ("revoke", "POST", "/admin/revoke", {"json": {"sub": "alice"}}),
]


async def call(http: httpx.AsyncClient, route: tuple, tok: str | None) -> httpx.Response:
    _, method, path, kwargs = route
    kwargs = dict(kwargs)
    kwargs["headers"] = {**kwargs.get("headers", {}), **bearer(tok)}
    with anyio.fail_after(10):
        return await http.request(method, path, **kwargs)


def error_body(response: httpx.Response) -> str | None:
    """The ``error`` of a ``{error, detail}`` JSON body, or why there is none."""
    try:
        body = response.json()
    except ValueError:
        return f"<not JSON: {response.text[:80]!r}>"
    if not isinstance(body, dict) or "error" not in body or "detail" not in body:
        return f"<not {{error, detail}}: {body!r}>"
    return body["error"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> RsaKeys:
    return RsaKeys(tmp_path_factory.mktemp("jwks"))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, keys: RsaKeys) -> Iterator[ServerProcess]:
    """One server (HS256 secret + a JWKS file) with org A's task/1 and notes stored."""
    workdir = tmp_path_factory.mktemp("matrix")
    args = ("--auth-secret", SECRET, "--auth-jwks", str(keys.path), *FAST)
    with ServerProcess(workdir, *args) as server:
        with httpx.Client(base_url=server.url, timeout=10, headers=bearer(token())) as http:
            created = http.post(
                "/sync/v1/mutations",
                json={"mutations": [{"t": "task", "id": "1", "op": "i", "p": {"title": "A"}}]},
            )
            assert created.status_code == 200, created.text
            stored = http.post(
                "/docs/notes/update",
                content=doc_update("A notes"),
                headers={"content-type": "application/octet-stream"},
            )
            assert stored.status_code == 200, stored.text
        yield server


def org_a_intact(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10, headers=bearer(token())) as http:
        doc = http.get("/docs/task/1")
        assert doc.status_code == 200, doc.text
        assert doc.json()["content"]["fields"]["title"] == "A", doc.json()


# -- 401 / 4401: bad tokens on every route --------------------------------------------------


BAD = [
    "missing",
    "forged",
    "forged_mode",
    "expired",
    "wrong_secret",
    "malformed",
    "malformed_segments",
    "alg_none",
    "wrong_kid",
    "jwks_wrong_key",
]


@pytest.mark.parametrize("kind", BAD)
async def test_bad_token_is_refused_on_every_route_and_websocket(
    seeded: ServerProcess, keys: RsaKeys, kind: str
) -> None:
    bad = bad_tokens(keys)[kind]
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        for route in ROUTES:
            response = await call(http, route, bad)
            if response.status_code != 401 or error_body(response) is None:
                wrong.append(f"{route[0]}: {response.status_code} {response.text[:120]!r}")
            elif error_body(response).startswith("<"):
                wrong.append(f"{route[0]}: 401 but body {error_body(response)}")
        status = await sse_status(http, bad)
        if status != 401:
            wrong.append(f"SSE /sync/v1/events (header): {status}")
        if bad is not None:  # EventSource cannot set headers: ?token=
            status = await sse_status(http, None, "/sync/v1/events?token=" + bad)
            if status != 401:
                wrong.append(f"SSE /sync/v1/events?token=: {status}")
    for label, url in (
        ("yjs", ws_base(seeded) + "/yjs/task/1"),
        ("frame ws", ws_base(seeded) + "/sync/v1/ws"),
    ):
        for via in ("query", "header", "subprotocol") if bad is not None else ("query",):
            outcome = await ws_outcome(url, bad, via=via)
            if outcome != 4401:
                wrong.append(f"{label} ({via}): {outcome}")
    assert not wrong, f"{kind} token was not refused with 401/4401:\n" + "\n".join(wrong)
    org_a_intact(seeded)


async def test_the_good_tokens_of_the_matrix_are_accepted(
    seeded: ServerProcess, keys: RsaKeys
) -> None:
    """The control for the sweep above: the same routes with good tokens (HS256 and
    the JWKS key) are not refused, so the 401s are about the tokens."""
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        for good in (token, keys.sign):
            for route in ROUTES:
                if route[1] != "GET":
                    continue
                # /metrics is for operators (admin); the rest is readable with read
                mode = "admin" if route[0] == "metrics" else "read"
                response = await call(http, route, good(mode=mode))
                assert response.status_code not in (401, 403), (route[0], response.text)
            assert await sse_status(http, good(mode="read")) == 200
    for url in (ws_base(seeded) + "/yjs/task/1", ws_base(seeded) + "/sync/v1/ws"):
        assert await ws_outcome(url, keys.sign(), via="header") == OPEN
        assert await ws_outcome(url, token(mode="read"), via="subprotocol") == OPEN
        assert await ws_outcome(url, token(), via="query") == OPEN


async def test_token_of_a_rotated_out_secret_is_refused_after_restart(
    tmp_path: Path, keys: RsaKeys
) -> None:
    old = token(secret=SECRET)
    new = token(secret=NEW_SECRET)
    db = tmp_path / "rotate.db"
    with ServerProcess(tmp_path, "--auth-secret", SECRET, "--auth-secret", NEW_SECRET, db=db) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as http:
            for tok in (old, new):
                assert (await http.get("/docs", headers=bearer(tok))).status_code == 200
            stored = await http.post(
                "/docs/kept/update",
                content=doc_update("before rotation"),
                headers={"content-type": "application/octet-stream", **bearer(old)},
            )
            assert stored.status_code == 200, stored.text
    with ServerProcess(tmp_path, "--auth-secret", NEW_SECRET, db=db) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as http:
            refused = await http.get("/docs/kept", headers=bearer(old))
            assert refused.status_code == 401, refused.text
            assert error_body(refused) is not None and not error_body(refused).startswith("<")
            kept = await http.get("/docs/kept", headers=bearer(new))
            assert kept.status_code == 200, kept.text
            assert kept.json()["content"]["body"] == "before rotation"
        assert await ws_outcome(ws_base(s) + "/yjs/kept", old) == 4401
        assert await ws_outcome(ws_base(s) + "/sync/v1/ws", old) == 4401
        assert await ws_outcome(ws_base(s) + "/yjs/kept", new) == OPEN


# -- 403 / 4403: outside the grant, and read tokens that write ------------------------------


async def test_doc_outside_the_grant_is_forbidden_everywhere(seeded: ServerProcess) -> None:
    notes_only = token(docs=("notes", "note/*"), mode="write")
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        for route in ROUTES:
            if "task/1" not in route[2] and route[0] != "mutations":
                continue
            response = await call(http, route, notes_only)
            if route[0] == "mutations" and response.status_code == 200:
                # a batch answers per mutation: each one is checked against its own doc
                if [r["status"] for r in response.json()["results"]] == [403]:
                    continue
            if response.status_code != 403 or error_body(response) is None:
                wrong.append(f"{route[0]}: {response.status_code} {response.text[:120]!r}")
        # what the grant covers still works
        inside = await http.get("/docs/notes", headers=bearer(notes_only))
        assert inside.status_code == 200, inside.text
        listed = await http.get("/docs", headers=bearer(notes_only))
        if listed.status_code == 200 and "task/1" in listed.text:
            wrong.append(f"GET /docs lists a doc outside the grant: {listed.text[:200]}")
        records = await http.get("/sync/v1/records", headers=bearer(notes_only))
        if records.status_code == 200 and '"task"' in records.text:
            wrong.append(f"GET /sync/v1/records shows a record outside the grant: {records.text}")
        delta = await http.get("/sync/v1/delta", params={"since": 0}, headers=bearer(notes_only))
        if delta.status_code == 200 and '"task"' in delta.text:
            wrong.append(f"GET /sync/v1/delta shows frames outside the grant: {delta.text}")
    outcome = await ws_outcome(ws_base(seeded) + "/yjs/task/1", notes_only)
    if outcome != 4403:
        wrong.append(f"yjs task/1: {outcome}")
    assert not wrong, "outside the grant:\n" + "\n".join(wrong)
    org_a_intact(seeded)


async def test_yjs_refusal_for_a_doc_outside_the_grant_says_permission_denied(
    seeded: ServerProcess,
) -> None:
    """y-protocols' auth message ``[2][0]"permission denied"`` comes before the 4403."""
    url = ws_base(seeded) + "/yjs/task/1?token=" + token(docs=("notes",))
    received: list[bytes] = []
    with anyio.fail_after(10):
        async with websockets.connect(url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    received.append(await ws.recv())
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    auth = [m for m in received if isinstance(m, bytes) and m[:2] == b"\x02\x00"]
    assert auth and b"permission denied" in auth[0], received


@pytest.mark.parametrize("route", [r for r in ROUTES if r[1] != "GET"], ids=lambda r: r[0])
async def test_read_token_cannot_write(seeded: ServerProcess, route: tuple) -> None:
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        response = await call(http, route, token(mode="read"))
    assert response.status_code == 403, response.text
    assert error_body(response) is not None and not error_body(response).startswith("<")
    org_a_intact(seeded)


async def test_write_token_cannot_revoke(seeded: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        response = await http.post(
            "/admin/revoke", json={"org": "orga"}, headers=bearer(token(mode="write"))
        )
    assert response.status_code == 403, response.text


async def test_read_token_yjs_edit_is_not_stored(seeded: ServerProcess) -> None:
    doc = Doc()
    url = ws_base(seeded) + "/yjs"
    async with connect(url, "notes", doc, additional_headers=bearer(token(mode="read"))) as c:
        with anyio.fail_after(10):
            await c.synced()
        assert str(doc.get("body", type=Text)) == "A notes"  # a reader syncs
        doc.get("body", type=Text).insert(0, "read-only edit ")
        with anyio.fail_after(10):
            await c.flush()
        # the connection is not closed for it: a reader keeps reading
        watcher = Doc()
        async with connect(url, "notes", watcher, additional_headers=bearer(token())) as w:
            with anyio.fail_after(10):
                await w.synced()
            assert str(watcher.get("body", type=Text)) == "A notes"
        assert not c.closed.is_set()
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        stored = await http.get("/docs/notes", headers=bearer(token()))
    assert stored.json()["content"]["body"] == "A notes"


# -- tenant isolation: org B never sees a byte of org A --------------------------------------


class Feed:
    """A frame-feed WebSocket that keeps every raw message it received."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.raw: list[str] = []

    async def until(self, needle: str, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not any(needle in m for m in self.raw):
                self.raw.append(await self.ws.recv())


async def sse_until(http: httpx.AsyncClient, tok: str, needle: str, since: int) -> str:
    """The SSE stream from the start of the log up to the line holding ``needle``."""
    seen: list[str] = []
    with anyio.fail_after(10):
        async with http.stream(
            "GET", "/sync/v1/events", params={"since": since}, headers=bearer(tok)
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                seen.append(line)
                if needle in line:
                    return "\n".join(seen)
    raise AssertionError("SSE stream ended")


async def test_org_b_never_sees_a_byte_of_org_a(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    secret_a = "A-secret-" + uuid.uuid4().hex
    a = token(sub="alice", org="orga")
    b = token(sub="bob", org="orgb")
    b_admin = token(sub="bob-admin", org="orgb", mode="admin")
    ws = ws_base(server)

    def insert(tok: str, title: str, id: str = "1") -> dict:
        return {
            "json": {"mutations": [{"t": "task", "id": id, "op": "i", "p": {"title": title}}]},
            "headers": bearer(tok),
        }

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # Both orgs use the same names: task/1 (a record) and notes (a plain doc).
        assert (await http.post("/sync/v1/mutations", **insert(a, secret_a))).status_code == 200
        post_a = await http.post(
            "/docs/notes/update",
            content=doc_update(secret_a),
            headers={"content-type": "application/octet-stream", **bearer(a)},
        )
        assert post_a.status_code == 200, post_a.text
        # A is present on its task/1 (frame feed view) and in a Yjs room.
        async with websockets.connect(f"{ws}/sync/v1/ws?token={a}") as a_feed:
            await a_feed.send(
                json.dumps({"type": "view", "t": "task", "id": "1", "state": {"name": secret_a}})
            )
            present_a = None
            for _ in range(50):
                present_a = await http.get("/sync/v1/presence/task/1", headers=bearer(a))
                if secret_a in present_a.text:
                    break
                await anyio.sleep(0.05)
            assert secret_a in present_a.text, f"A's own view never showed: {present_a.text}"

            # B's own task/1 is a new record, not a conflict with A's.
            b_insert = await http.post("/sync/v1/mutations", **insert(b, "B-own"))
            assert b_insert.status_code == 200, b_insert.text
            assert b_insert.json()["results"][0]["status"] == 201, b_insert.text

            seen_by_b: dict[str, str] = {}
            for label, path, kwargs in [
                ("list docs", "/docs", {}),
                ("get task/1", "/docs/task/1", {}),
                ("get task/1 update", "/docs/task/1/update", {}),
                ("records", "/sync/v1/records", {}),
                ("delta", "/sync/v1/delta", {"params": {"since": 0}}),
                ("presence", "/sync/v1/presence/task/1", {}),
            ]:
                response = await http.get(path, headers=bearer(b), **kwargs)
                # (delta since=0 may be 410 here: see the sid tests below; bytes still count)
                assert response.status_code in ((200, 410) if label == "delta" else (200,)), (
                    label,
                    response.text,
                )
                seen_by_b[label] = response.content.decode("latin-1")
            metrics = await http.get("/metrics", headers=bearer(b_admin))
            assert metrics.status_code == 200, metrics.text
            seen_by_b["metrics"] = metrics.text
            notes_b = await http.get("/docs/notes", headers=bearer(b))
            assert notes_b.status_code == 404, notes_b.text
            seen_by_b["notes"] = notes_b.text

            leaks = {k: v[:200] for k, v in seen_by_b.items() if secret_a in v or "orga" in v}
            assert not leaks, f"org B saw org A's bytes: {leaks}"
            assert json.loads(seen_by_b["get task/1"])["content"]["fields"] == {"title": "B-own"}
            assert [r["fields"] for r in json.loads(seen_by_b["records"])["records"]] == [
                {"title": "B-own"}
            ]
            since = json.loads(seen_by_b["records"])["sid"] - 1
            delta_b = await http.get("/sync/v1/delta", params={"since": since}, headers=bearer(b))
            assert delta_b.status_code == 200, delta_b.text
            frames_b = delta_b.json()["frames"]
            assert [f["who"] for f in frames_b] == ["bob"], frames_b

            # Live: B's frame WS and SSE, then A writes, then B writes a marker.
            async with websockets.connect(f"{ws}/sync/v1/ws?since={since}&token={b}") as b_ws:
                feed_b = Feed(b_ws)
                await feed_b.until("B-own")
                a_live = await http.post(
                    "/sync/v1/mutations", **insert(a, secret_a + "-live", id="2")
                )
                assert a_live.status_code == 200
                marker = "B-marker-" + uuid.uuid4().hex
                b_live = await http.post("/sync/v1/mutations", **insert(b, marker, id="2"))
                assert b_live.status_code == 200
                await feed_b.until(marker)
                sse_b = await sse_until(http, b, marker, since)
            assert not [m for m in feed_b.raw if secret_a in m], feed_b.raw
            assert secret_a not in sse_b, sse_b

            # Yjs: B's notes room is B's own (empty), and edits do not cross orgs.
            b_doc = Doc()
            a_doc = Doc()
            async with (
                connect(f"{ws}/yjs", "notes", a_doc, additional_headers=bearer(a)) as ya,
                connect(f"{ws}/yjs", "notes", b_doc, additional_headers=bearer(b)) as yb,
            ):
                with anyio.fail_after(10):
                    await ya.synced()
                    await yb.synced()
                assert str(a_doc.get("body", type=Text)) == secret_a
                assert str(b_doc.get("body", type=Text)) == ""
                b_doc.get("body", type=Text).insert(0, "B was here")
                a_text = a_doc.get("body", type=Text)
                a_text.insert(len(a_text), " and A again")
                with anyio.fail_after(10):
                    await ya.flush()
                    await yb.flush()
                ya.awareness.set_local_state({"user": {"name": secret_a}})
                with anyio.fail_after(10):
                    await ya.flush()
                # B's second client gets B's edit and B's cursor: A's would have come first.
                b_doc2 = Doc()
                async with connect(
                    f"{ws}/yjs", "notes", b_doc2, additional_headers=bearer(b)
                ) as y2:
                    with anyio.fail_after(10):
                        await y2.synced()
                    yb.awareness.set_local_state({"user": {"name": "bob"}})
                    await wait_for(lambda: str(b_doc2.get("body", type=Text)) == "B was here")
                    await wait_for(lambda: "bob" in json.dumps(y2.remote_states))
                    seen = json.dumps([y2.remote_states, yb.remote_states])
                assert secret_a not in seen, seen
                assert secret_a not in str(b_doc.get("body", type=Text)) + str(
                    b_doc2.get("body", type=Text)
                )
                assert "B was here" not in str(a_doc.get("body", type=Text))

            # B deleting "its" task/1 deletes B's record only.
            deleted = await http.delete("/docs/task/1", headers=bearer(b))
            assert deleted.status_code in (200, 204), deleted.text
            still_a = await http.get("/docs/task/1", headers=bearer(a))
            assert still_a.status_code == 200, still_a.text
            assert still_a.json()["content"]["fields"]["title"] == secret_a

            # B's admin can revoke only in org B: A's feed and Yjs stay open.
            for body in ({"sub": "alice"}, {"org": "orga"}, {"doc": "task/1"}):
                revoke = await http.post("/admin/revoke", json=body, headers=bearer(b_admin))
                assert revoke.status_code in (200, 202, 403), (body, revoke.text)
            await a_feed.send(json.dumps({"type": "ping"}))
            with anyio.fail_after(5):
                while True:
                    message = json.loads(await a_feed.recv())
                    if isinstance(message, dict) and message.get("type") == "pong":
                        break
    # the sid sequence B sees is B's own: its frames count from its own start
    sids_b = [f["sid"] for f in frames_b]
    assert sids_b == sorted(sids_b)


async def test_open_server_still_works_without_a_token(server_factory) -> None:
    """Auth off: every route works as before (default/anonymous/everything)."""
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for route in ROUTES:
            if route[0] in ("revoke",):
                continue
            response = await call(http, route, None)
            assert response.status_code not in (401, 403), (route[0], response.text)
    assert await ws_outcome(ws_base(server) + "/yjs/free") == OPEN
    assert await ws_outcome(ws_base(server) + "/sync/v1/ws") == OPEN


async def test_sid_sequence_seen_by_org_b_does_not_count_org_a_writes(server_factory) -> None:
    """The issue: "the sid sequence as seen by a client" is scoped to the org, so B
    cannot count A's writes from the gaps in its own sids."""
    server = server_factory("--auth-secret", SECRET, *FAST)
    a, b = token(org="orga"), token(sub="bob", org="orgb")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for n in range(5):
            body = {"mutations": [{"t": "task", "id": str(n), "op": "i", "p": {"n": n}}]}
            assert (await http.post("/sync/v1/mutations", json=body, headers=bearer(a))).is_success
        body = {"mutations": [{"t": "task", "id": "b", "op": "i", "p": {"n": 0}}]}
        written = await http.post("/sync/v1/mutations", json=body, headers=bearer(b))
        assert written.status_code == 200, written.text
        records = (await http.get("/sync/v1/records", headers=bearer(b))).json()
    [result] = written.json()["results"]
    assert [r["sid"] for r in records["records"]] == [records["sid"]] == [result["sid"]]
    assert records["sid"] == 1, (
        f"org B's first frame has sid {records['sid']}: its sids count org A's 5 writes"
    )


@pytest.mark.parametrize("feed", ["delta", "records_then_delta", "ws", "sse"])
async def test_second_org_client_can_read_its_log_from_the_start(server_factory, feed: str) -> None:
    """``since=0`` means "from the start" for every org, also for the second org that
    writes on a server (whose first frame is not sid 1 in a shared sequence): never
    410 ``since_too_old`` when nothing of that org was ever trimmed."""
    server = server_factory("--auth-secret", SECRET, *FAST)
    a, b = token(org="orga"), token(sub="bob", org="orgb")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for tok, title in ((a, "A"), (b, "B")):
            body = {"mutations": [{"t": "task", "id": "1", "op": "i", "p": {"title": title}}]}
            assert (
                await http.post("/sync/v1/mutations", json=body, headers=bearer(tok))
            ).is_success
        if feed in ("delta", "records_then_delta"):
            since = 0
            if feed == "records_then_delta":  # bootstrap: records, then delta from its sid
                since = (await http.get("/sync/v1/records", headers=bearer(b))).json()["sid"]
            response = await http.get("/sync/v1/delta", params={"since": since}, headers=bearer(b))
            assert response.status_code == 200, response.text
            titles = [f["p"].get("title") for f in response.json()["frames"]]
            assert titles == ([] if since else ["B"]), response.text
        elif feed == "ws":
            async with websockets.connect(f"{ws_base(server)}/sync/v1/ws?since=0&token={b}") as w:
                with anyio.fail_after(5):
                    message = json.loads(await w.recv())
            assert isinstance(message, list) and message[0]["p"] == {"title": "B"}, message
        else:
            status = await sse_status(http, b, "/sync/v1/events?since=0")
            assert status == 200


async def test_no_token_or_secret_reaches_the_server_log(
    seeded: ServerProcess, keys: RsaKeys
) -> None:
    """Audit lines for every refusal, and uvicorn's own lines (the server runs at
    ``--log-level debug``), never carry a token or the secret (issue: part 8)."""
    sent = [t for t in bad_tokens(keys).values() if t and len(t) > 20]
    sent += [token(mode="read"), token(docs=("nothing/*",))]
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        for tok in sent:
            await http.get("/docs/task/1", headers=bearer(tok))
            await http.get("/sync/v1/records", params={"token": tok})
    for tok in sent:
        for via in ("query", "header", "subprotocol"):
            await ws_outcome(ws_base(seeded) + "/yjs/task/1", tok, via=via, hold=0.2)
            await ws_outcome(ws_base(seeded) + "/sync/v1/ws", tok, via=via, hold=0.2)
    log = seeded.log()
    assert "refused" in log  # the audit lines are there...
    signatures = [t.rsplit(".", 1)[-1] for t in sent]
    leaked = [
        t[:16] + "..."
        for t, sig in zip(sent, signatures, strict=True)
        if t in log or (len(sig) > 10 and sig in log)
    ]
    assert not leaked, f"tokens in the server log: {leaked}"  # ...without the tokens
    assert SECRET not in log


def rooms_loaded(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("crdt_sync_rooms "):
            return float(line.split()[1])
    raise AssertionError(f"no crdt_sync_rooms gauge in:\n{metrics_text[:500]}")


async def test_refused_connections_load_no_room_and_create_no_doc(
    seeded: ServerProcess, keys: RsaKeys
) -> None:
    admin = bearer(token(mode="admin"))
    async with httpx.AsyncClient(base_url=seeded.url, timeout=10) as http:
        before = rooms_loaded((await http.get("/metrics", headers=admin)).text)
        for n, bad in enumerate(
            [*bad_tokens(keys).values(), token(docs=("elsewhere/*",))]  # last: 4403
        ):
            assert await ws_outcome(ws_base(seeded) + f"/yjs/refused/{n}", bad) in (4401, 4403)
            response = await http.post(
                f"/docs/refused/{n}/update",
                content=doc_update("x"),
                headers={"content-type": "application/octet-stream", **bearer(bad)},
            )
            assert response.status_code in (401, 403)
        after = rooms_loaded((await http.get("/metrics", headers=admin)).text)
        listed = await http.get("/docs", params={"prefix": "refused/"}, headers=admin)
    assert listed.json()["docs"] == [], listed.text
    assert after <= before, (before, after)
