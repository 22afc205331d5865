"""The frame feed under a principal: grant-filtered frames and presence, in-band auth
(renewal keeps the cursor; another org or actor 4403; a bad token 4401), expiry in
session, ``pong``/keep-alive ``expires_in``, revocation and the message rate limit.

The real app runs in-process on a real store; the endpoints are driven over ASGI with
a scope the front door's contract builds (``set_principal``), as the front door does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from crdt_sync import sync_stream
from crdt_sync.app import Runtime, create_app
from crdt_sync.auth.authenticator import Authenticator
from crdt_sync.auth.principal import Grant, Principal, set_principal
from crdt_sync.auth.sessions import Sessions
from crdt_sync.auth.tokens import TokenVerifier, issue_token
from crdt_sync.mutations import Mutation
from crdt_sync.ratelimit import SlidingWindowLimiter
from crdt_sync.settings import Settings
from persistence.store import FrameBatch, FrameDraft

pytestmark = pytest.mark.anyio

TIMEOUT = 10
SECRET = "k" * 40
ALICE = Principal("acme", "alice", Grant(("issue/*",), "read"), expires_at=time.time() + 600)


def token(sub: str = "alice", org: str = "acme", docs: tuple[str, ...] = ("issue/*",), **kw: Any):
    return issue_token(SECRET, sub, org, docs, kw.pop("mode", "read"), **kw)


def principal(**kw: Any) -> Principal:
    base: dict[str, Any] = {
        "org": "acme",
        "actor": "alice",
        "grant": Grant(("issue/*",), "read"),
        "expires_at": time.time() + 600,
    }
    base.update(kw)
    return Principal(**base)


@asynccontextmanager
async def running(tmp_path: Path, *, ws_limit: int = 1000) -> AsyncIterator[Runtime]:
    app = create_app(Settings(db=str(tmp_path / "crdt-sync.db"), frame_coalesce_ms=0))
    runtime: Runtime = app.state.runtime
    async with runtime.running():
        runtime.auth = Authenticator(TokenVerifier([SECRET]))
        runtime.sessions = Sessions()
        runtime.ws_limiter = SlidingWindowLimiter(ws_limit, 60.0)
        yield runtime


def ws_scope(who: Principal, query: str = "") -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/sync/v1/ws",
        "query_string": query.encode(),
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "subprotocols": [],
    }
    set_principal(scope, who)
    return scope


class FeedSocket:
    """The client end of one in-process WebSocket to ``FrameStreams.websocket``.

    asyncio queues, not anyio streams: the server writes frames from a store callback
    outside any task, as it does on uvicorn, where ``send`` does not suspend either.
    """

    def __init__(self) -> None:
        self._in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.close: dict[str, Any] | None = None

    # the app's side
    async def receive(self) -> dict[str, Any]:
        return await self._in.get()

    async def send(self, message: dict[str, Any]) -> None:
        self._out.put_nowait(message)

    # the client's side
    async def connect(self) -> dict[str, Any]:
        self._in.put_nowait({"type": "websocket.connect"})
        return await self._out.get()

    async def send_json(self, value: Any) -> None:
        self._in.put_nowait({"type": "websocket.receive", "text": json.dumps(value)})

    async def next(self) -> Any:
        """The next message (decoded), or the close event (then it disconnects)."""
        message = await self._out.get()
        if message["type"] == "websocket.close":
            self.close = message
            self.disconnect(message["code"])
            return message
        return json.loads(message["text"])

    async def until(self, want: Any) -> Any:
        """Messages until one ``want(message)`` accepts (bounded by the caller)."""
        while True:
            message = await self.next()
            if want(message):
                return message
            assert self.close is None, f"closed before the expected message: {self.close}"

    def disconnect(self, code: int = 1000) -> None:
        self._in.put_nowait({"type": "websocket.disconnect", "code": code})


@asynccontextmanager
async def feed(runtime: Runtime, who: Principal, query: str = "") -> AsyncIterator[FeedSocket]:
    socket = FeedSocket()
    streams = sync_stream.FrameStreams(runtime)
    async with anyio.create_task_group() as tg:
        tg.start_soon(streams.websocket, ws_scope(who, query), socket.receive, socket.send)
        accept = await socket.connect()
        assert accept["type"] == "websocket.accept"
        yield socket
        if socket.close is None:
            socket.disconnect()


async def write(runtime: Runtime, org: str, t: str, id: str, n: int = 0) -> int:
    """Log a frame as the node's feed does: committed, then published on its frame bus."""
    assert runtime.store is not None
    p = {"n": n}
    draft = FrameDraft(t=t, id=id, op="u", p=p, who="w", at=1, ctx={}, record=p)
    commit = runtime.store.log_frames(org, FrameBatch((draft,)))
    runtime.feed.publisher.publish_on_commit(commit, lambda frames: frames)
    (frame,) = await commit
    return frame.sid


async def create(runtime: Runtime, org: str, *names: str) -> None:
    """Make records exist (a ``view`` of a record that does not is refused)."""
    mutations = [Mutation(*name.split("/", 1), "i", {"n": 0}) for name in names]
    results = await runtime.feed.mutations.mutate_many(org, mutations, actor="w", client_id=None)
    assert all(isinstance(r, dict) and r["status"] == 201 for r in results), results


def is_frames(message: Any) -> bool:
    return isinstance(message, list)


def is_type(kind: str):
    return lambda message: isinstance(message, dict) and message.get("type") == kind


async def test_pong_tells_how_long_the_token_has_left(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal(expires_at=time.time() + 120)) as ws:
                await ws.send_json({"type": "ping"})
                pong = await ws.until(is_type("pong"))
                assert 115 <= pong["expires_in"] <= 120
            async with feed(runtime, principal(expires_at=None)) as ws:
                await ws.send_json({"type": "ping"})
                assert (await ws.until(is_type("pong")))["expires_in"] is None


async def test_only_frames_of_covered_records_of_its_org_are_sent(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            hidden = await write(runtime, "acme", "secret", "1")
            seen = await write(runtime, "acme", "issue", "1")
            await write(runtime, "other", "issue", "1")  # same record name, other tenant
            async with feed(runtime, principal(), "since=0") as ws:
                caught_up = await ws.until(is_frames)
                assert [(f["sid"], f["t"]) for f in caught_up] == [(seen, "issue")]
                assert hidden < seen
                await write(runtime, "other", "issue", "2")
                await write(runtime, "acme", "secret", "2")
                live = await write(runtime, "acme", "issue", "2")
                frames = await ws.until(is_frames)
                assert [(f["sid"], f["t"], f["id"]) for f in frames] == [(live, "issue", "2")]


async def test_in_band_auth_renews_the_session_and_keeps_the_cursor(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            first = await write(runtime, "acme", "issue", "1")
            short = principal(expires_at=time.time() + 1.5)
            async with feed(runtime, short, "since=0") as ws:
                assert [f["sid"] for f in await ws.until(is_frames)] == [first]
                await ws.send_json({"type": "auth", "token": token(ttl_seconds=600)})
                answer = await ws.until(is_type("auth"))
                assert answer["ok"] is True and 595 <= answer["expires_in"] <= 600
                # Past the first token's expiry: still open, and the cursor kept.
                await anyio.sleep(max(0.0, short.expires_at - time.time()) + 0.3)  # type: ignore[operator]
                second = await write(runtime, "acme", "issue", "2")
                assert [f["sid"] for f in await ws.until(is_frames)] == [second]
                await ws.send_json({"type": "ping"})
                assert (await ws.until(is_type("pong")))["expires_in"] >= 590
                assert ws.close is None
                # The session registry knows the renewed principal.
                (session,) = runtime.sessions.matching(org="acme", sub="alice")
                assert session.doc is None and session.principal.expires_at is not None
                assert session.principal.expires_at > time.time() + 500


async def test_in_band_auth_with_a_new_grant_changes_what_is_sent(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal()) as ws:
                await ws.send_json({"type": "auth", "token": token(docs=("wiki/**",))})
                await ws.until(is_type("auth"))
                await write(runtime, "acme", "issue", "1")
                wiki = await write(runtime, "acme", "wiki", "a/b")
                assert [f["sid"] for f in await ws.until(is_frames)] == [wiki]


@pytest.mark.parametrize(
    ("claims", "code", "error"),
    [
        ({"org": "other"}, 4403, "forbidden"),
        ({"sub": "mallory"}, 4403, "forbidden"),
        ({"mode": "read", "docs": ()}, 4401, "bad_signature"),  # signed with another key
    ],
)
async def test_in_band_auth_refusals_close_the_feed(
    tmp_path: Path, claims: dict[str, Any], code: int, error: str
) -> None:
    bad = (
        issue_token("z" * 40, "alice", "acme", ("issue/*",), "read")
        if code == 4401
        else token(**claims)
    )
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal()) as ws:
                await ws.send_json({"type": "auth", "token": bad})
                message = await ws.next()
                assert message["type"] == "error" and message["error"] == error
                close = await ws.next()
                assert close["type"] == "websocket.close" and close["code"] == code
            assert len(runtime.sessions) == 0


async def test_in_band_auth_without_a_token_closes_4401(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal()) as ws:
                await ws.send_json({"type": "auth"})
                assert (await ws.next())["error"] == "missing"
                assert (await ws.next())["code"] == 4401


async def test_expiry_in_session_closes_4401_after_an_error(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal(expires_at=time.time() + 0.3)) as ws:
                message = await ws.until(is_type("error"))
                assert message["error"] == "token_expired"
                close = await ws.next()
                assert close["type"] == "websocket.close" and close["code"] == 4401
            assert len(runtime.sessions) == 0


async def test_view_outside_the_grant_is_forbidden_and_the_feed_stays_open(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            await create(runtime, "acme", "issue/1")
            async with feed(runtime, principal()) as ws:
                for kind in ("view", "watch"):
                    await ws.send_json({"type": kind, "t": "secret", "id": "1"})
                    error = await ws.until(is_type("error"))
                    assert (error["error"], error["t"], error["id"]) == ("forbidden", "secret", "1")
                assert ("acme", "secret/1") not in runtime.manager.rooms
                await ws.send_json({"type": "view", "t": "issue", "id": "1", "state": {}})
                present = await ws.until(is_type("presence"))
                assert present["t"] == "issue"
                (viewer,) = [p for p in present["present"] if p["viewer"]]
                assert viewer["state"]["actor"] == "alice"


async def test_an_authenticated_viewer_is_named_by_its_actor(tmp_path: Path) -> None:
    """Even a token whose ``sub`` is ``anonymous``: the name is the server's."""
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            await create(runtime, "acme", "issue/1")
            who = principal(actor="anonymous")
            async with feed(runtime, who) as ws:
                state = {"user": {"name": "the CEO"}}
                await ws.send_json({"type": "view", "t": "issue", "id": "1", "state": state})
                present = await ws.until(is_type("presence"))
                (viewer,) = [p for p in present["present"] if p["viewer"]]
                assert viewer["state"]["user"]["name"] == "anonymous"


async def test_view_of_a_record_that_does_not_exist_loads_no_room(tmp_path: Path) -> None:
    """Else one client could hold --max-rooms rooms with views of random ids."""
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal()) as ws:
                for n in range(3):
                    await ws.send_json({"type": "view", "t": "issue", "id": f"nope{n}"})
                    error = await ws.until(is_type("error"))
                    assert (error["error"], error["id"]) == ("not_found", f"nope{n}")
                assert not runtime.manager.rooms
                await create(runtime, "acme", "issue/1")  # the feed is still open
                await ws.send_json({"type": "view", "t": "issue", "id": "1", "state": {}})
                present = await ws.until(is_type("presence"))
                assert present["id"] == "1"


async def test_presence_is_scoped_to_the_org_and_the_grant(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            await create(runtime, "acme", "issue/1", "secret/1")
            await create(runtime, "other", "note/9")
            everything = principal(grant=Grant(("**",), "read"))
            other_org = principal(org="other", grant=Grant(("**",), "read"))
            async with (
                feed(runtime, principal(), "presence=all") as narrow,
                feed(runtime, other_org, "presence=all") as stranger,
                feed(runtime, everything) as viewer,
            ):
                await viewer.send_json({"type": "view", "t": "secret", "id": "1", "state": {}})
                await viewer.until(is_type("presence"))
                await viewer.send_json({"type": "view", "t": "issue", "id": "1", "state": {}})
                await viewer.until(is_type("presence"))
                # The narrow subscriber hears of issue/1 and never of secret/1 first.
                first = await narrow.until(is_type("presence"))
                assert (first["t"], first["id"]) == ("issue", "1")
                # The other org hears nothing of acme's: its first presence is its own.
                mine = principal(org="other", actor="bob", grant=Grant(("**",), "read"))
                async with feed(runtime, mine) as bob:
                    await bob.send_json({"type": "view", "t": "note", "id": "9", "state": {}})
                    heard = await stranger.until(is_type("presence"))
                    assert (heard["t"], heard["id"]) == ("note", "9")
                    assert all(p["state"]["actor"] == "bob" for p in heard["present"])


async def test_revoke_closes_the_feed_with_4401(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with feed(runtime, principal()) as ws:
                await ws.send_json({"type": "ping"})
                await ws.until(is_type("pong"))
                assert runtime.sessions.revoke(org="acme", sub="alice") == 1
                assert (await ws.next())["error"] == "revoked"
                close = await ws.next()
                assert close["type"] == "websocket.close" and close["code"] == 4401


async def test_too_many_messages_close_4429(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path, ws_limit=3) as runtime:
            async with feed(runtime, principal()) as ws:
                for _ in range(3):
                    await ws.send_json({"type": "ping"})
                    await ws.until(is_type("pong"))
                await ws.send_json({"type": "ping"})
                error = await ws.next()
                assert error["error"] == "rate_limited" and error["retry_after"] > 0
                assert (await ws.next())["code"] == 4429


# -- SSE -------------------------------------------------------------------------------


class SseClient:
    """The client end of one in-process ``GET /sync/v1/events`` (asyncio, as above)."""

    def __init__(self) -> None:
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.ended = False

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self._out.put_nowait(message)

    async def chunk(self) -> str:
        message = await self._out.get()
        while message["type"] == "http.response.start":
            assert message["status"] == 200
            message = await self._out.get()
        self.ended = not message.get("more_body", False)
        return message["body"].decode()


@asynccontextmanager
async def events(runtime: Runtime, who: Principal, query: str = "") -> AsyncIterator[SseClient]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/sync/v1/events",
        "query_string": query.encode(),
        "headers": [],
        "client": ("127.0.0.1", 50001),
    }
    set_principal(scope, who)
    client = SseClient()
    streams = sync_stream.FrameStreams(runtime)
    async with anyio.create_task_group() as tg:
        tg.start_soon(streams.sse, scope, client.receive, client.send)
        yield client
        client.gone.set()


async def test_sse_expiry_sends_an_error_event_and_ends(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with events(runtime, principal(expires_at=time.time() + 0.3)) as sse:
                text = ""
                while not sse.ended:
                    text += await sse.chunk()
                assert "event: error" in text and '"error":"token_expired"' in text
            assert len(runtime.sessions) == 0


async def test_sse_sends_only_covered_frames_and_ends_on_revoke(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            await write(runtime, "acme", "secret", "1")
            seen = await write(runtime, "acme", "issue", "1")
            await write(runtime, "other", "issue", "1")
            async with events(runtime, principal(), "since=0") as sse:
                text = ""
                while f"id: {seen}\n" not in text:
                    text += await sse.chunk()
                assert text.count("id: ") == 1
                assert runtime.sessions.revoke(org="acme") == 1
                while not sse.ended:
                    text += await sse.chunk()
                assert "closed_4401" in text and "secret" not in text


async def test_sse_keep_alive_tells_how_long_the_token_has_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_stream, "SSE_KEEPALIVE_SECONDS", 0.05)
    with anyio.fail_after(TIMEOUT):
        async with running(tmp_path) as runtime:
            async with events(runtime, principal(expires_at=time.time() + 300)) as sse:
                text = ""
                while ": keep-alive" not in text:
                    text += await sse.chunk()
                line = next(x for x in text.splitlines() if x.startswith(": keep-alive"))
                assert 295 <= int(line.split("expires_in=")[1]) <= 300
