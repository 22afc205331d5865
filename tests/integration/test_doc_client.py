"""crdt_sync.client.DocClient against real server processes: edits both ways, offline
edits across a server restart (applied once), presence, close codes, heartbeat."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import DocClient, connect
from crdt_sync.client.backoff import Backoff
from crdt_sync.client.docs import DocNotFound, Forbidden, Unauthorized
from crdt_sync.client.urls import http_base, yjs_base
from tests.cluster import free_port
from tests.integration.auth_support import SECRET, token
from tests.server_process import ServerProcess

pytestmark = pytest.mark.anyio


#: Quick reconnects: the tests restart servers and must not wait out a 30 s cap.
def fast_backoff() -> Backoff:
    return Backoff(base=0.2, cap=1.0, stable_after=1.0)


async def wait_until(predicate: Callable[[], Any], label: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` on the event loop (where the clients apply what arrives)."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"waited {timeout} s for {label}")


def body_of(doc: Any) -> str:
    return str(doc.get("body", type=Text))


async def server_content(server: ServerProcess, name: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as http:
        response = await http.get("/docs/" + quote(name, safe="/"))
    response.raise_for_status()
    return response.json()["content"]


def restart_on_same_port(server_factory: Any, server: ServerProcess, *args: str) -> ServerProcess:
    port = urlsplit(server.url).port
    assert port is not None
    return server_factory("--port", str(port), *args, db=server.db)


def test_url_forms() -> None:
    for url in ("http://127.0.0.1:9", "ws://127.0.0.1:9/", "ws://127.0.0.1:9/yjs"):
        assert yjs_base(url) == "ws://127.0.0.1:9/yjs"
        assert http_base(url) == "http://127.0.0.1:9"
    assert yjs_base("https://example.test/collab") == "wss://example.test/collab/yjs"
    with pytest.raises(ValueError, match="query"):
        yjs_base("http://127.0.0.1:9/?token=x")
    with pytest.raises(ValueError, match="http"):
        yjs_base("127.0.0.1:9")


async def test_edits_flow_both_ways(server) -> None:
    name = "note/both-ways"
    async with DocClient(server.url, name) as client, connect(server.ws_url, name) as other:
        with anyio.fail_after(20):
            await client.synced()
            await other.synced()
        assert client.state == "online"
        body = client.doc.get("body", type=Text)
        body += "from DocClient"
        await wait_until(lambda: body_of(other.doc) == "from DocClient", "the other client")
        other_body = other.doc.get("body", type=Text)
        other_body += "; from YjsClient"
        await wait_until(
            lambda: body_of(client.doc) == "from DocClient; from YjsClient", "the DocClient"
        )
        with anyio.fail_after(20):
            await client.flush()
        assert (await server_content(server, name))["body"] == "from DocClient; from YjsClient"


async def test_offline_edits_reach_the_restarted_server_once(server_factory) -> None:
    name = "note/offline"
    server = server_factory()
    async with DocClient(server.url, name, backoff=fast_backoff()) as client:
        with anyio.fail_after(20):
            await client.synced()
        body = client.doc.get("body", type=Text)
        body += "online. "
        client.set_presence({"user": {"name": "py"}})
        with anyio.fail_after(20):
            await client.flush()
        # Sent but perhaps not yet answered when the server goes: resent by the resync.
        body += "in flight. "

        server.stop()
        with anyio.fail_after(20):
            await client.wait_for_state("offline")
        body += "typed offline."
        body.insert(0, "[offline prefix] ")

        # Down for a while: the client keeps trying (refused) while holding the edits.
        tried = client.attempts
        await wait_until(lambda: client.attempts >= tried + 2, "two refused reconnects")
        assert client.state == "offline" and "cannot connect" in (client.last_problem or "")
        restarted = await anyio.to_thread.run_sync(restart_on_same_port, server_factory, server)
        with anyio.fail_after(30):
            await client.synced()
            await client.flush()
        expected = "[offline prefix] online. in flight. typed offline."
        assert body_of(client.doc) == expected
        assert (await server_content(restarted, name))["body"] == expected
        assert client.connections == 2

        # The presence was sent again on the new connection.
        async with connect(restarted.ws_url, name) as watcher:
            await wait_until(
                lambda: {"user": {"name": "py"}} in watcher.remote_states.values(),
                "the presence set before the restart",
            )
            assert body_of(watcher.doc) == expected


async def test_presence_is_seen_and_removed_on_close(server) -> None:
    name = "note/presence"
    async with connect(server.ws_url, name) as watcher:
        with anyio.fail_after(20):
            await watcher.synced()
        watcher.awareness.set_local_state({"user": {"name": "watcher"}})
        async with DocClient(server.url, name) as client:
            client.set_presence({"user": {"name": "py"}, "cursor": 3})
            with anyio.fail_after(20):
                await client.synced()
            await wait_until(
                lambda: {"user": {"name": "py"}, "cursor": 3} in watcher.remote_states.values(),
                "the watcher to see the DocClient's presence",
            )
            await wait_until(
                lambda: {"user": {"name": "watcher"}} in client.presence.values(),
                "the DocClient to see the watcher's presence",
            )
            client.set_presence({"user": {"name": "py"}, "cursor": 4})
            await wait_until(
                lambda: {"user": {"name": "py"}, "cursor": 4} in watcher.remote_states.values(),
                "the updated presence",
            )
        await wait_until(lambda: not watcher.remote_states, "the presence removal on close")
        assert client.stopped and client.error is None


async def test_a_deleted_doc_stops_the_client_with_not_found(server) -> None:
    name = "note/deleted"
    async with DocClient(server.url, name) as client:
        with anyio.fail_after(20):
            await client.synced()
        body = client.doc.get("body", type=Text)
        body += "soon gone"
        with anyio.fail_after(20):
            await client.flush()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.delete("/docs/" + name)).status_code == 200
        with anyio.fail_after(20), pytest.raises(DocNotFound, match="deleted"):
            await client.wait_for_state("syncing")  # never again: it stops instead
        assert client.stopped
        assert isinstance(client.error, DocNotFound) and client.error.code == 4404
        with pytest.raises(DocNotFound):
            await client.synced()
        assert client.connections == 1


async def test_heartbeat_notices_a_stopped_server(server) -> None:
    name = "note/heartbeat"
    ping_interval, ping_timeout, close_timeout = 0.5, 1.0, 1.0
    async with DocClient(
        server.url,
        name,
        backoff=fast_backoff(),
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        open_timeout=2.0,
        close_timeout=close_timeout,
    ) as client:
        with anyio.fail_after(20):
            await client.synced()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            # The TCP connection stays up (the kernel still acks): only the heartbeat
            # can tell. Bounded generously: the figure is the sum of the three.
            with anyio.fail_after(10 * (ping_interval + ping_timeout + close_timeout)):
                await client.wait_for_state("offline")
            assert client.heartbeat_timeouts == 1
            assert "heartbeat" in (client.last_problem or "")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        with anyio.fail_after(30):
            await client.synced()
        assert client.connections >= 2


async def test_token_provider_renews_an_expired_token(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET)
    name = "note/renewed"
    issued: list[str] = []

    async def provider() -> str:
        issued.append(token(ttl=600))
        return issued[-1]

    async with DocClient(
        server.url, name, token=token(ttl=2), token_provider=provider, backoff=fast_backoff()
    ) as client:
        with anyio.fail_after(20):
            await client.synced()
        body = client.doc.get("body", type=Text)
        body += "before expiry"
        # At exp the server closes 4401; the provider's token reconnects it.
        await wait_until(lambda: issued and client.state == "online", "a renewed session", 30)
        body += ", after"
        with anyio.fail_after(20):
            await client.flush()
        content = await server_content(server, name, token(mode="read"))
        assert content["body"] == "before expiry, after"
        assert client.connections == 2 and len(issued) == 1


async def test_bad_token_and_foreign_doc_stop_with_clear_errors(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET)
    async with DocClient(server.url, "note/x", token="not-a-token") as client:
        with anyio.fail_after(20), pytest.raises(Unauthorized, match="not authorized"):
            await client.synced()
        assert client.error is not None and client.error.code == 4401
    only_issues = token(docs=("issue/**",))
    async with DocClient(server.url, "note/x", token=only_issues) as client:
        with anyio.fail_after(20), pytest.raises(Forbidden, match="does not cover"):
            await client.synced()
        assert client.error is not None and client.error.code == 4403


async def test_rate_limited_client_waits_and_resyncs_everything(server_factory) -> None:
    server = server_factory("--rate-limit-ws-messages", "20", "--rate-limit-window", "1")
    name = "note/limited"
    async with DocClient(server.url, name, backoff=fast_backoff()) as client:
        with anyio.fail_after(20):
            await client.synced()
        body = client.doc.get("body", type=Text)
        for i in range(60):  # one update message each: past the limit, closed 4429
            body += chr(ord("a") + i % 26)
        expected = str(body)
        await wait_until(lambda: client.connections >= 2 and client.state == "online", "a retry")
        with anyio.fail_after(20):
            await client.flush()
        assert client.last_close is not None and client.last_close[0] == 4429
        assert "retry in" in client.last_close[1]
        assert (await server_content(server, name))["body"] == expected


async def test_set_token_reconnects_with_the_new_token(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET)
    name = "note/switch"
    async with DocClient(server.url, name, token=token(sub="alice")) as client:
        with anyio.fail_after(20):
            await client.synced()
        client.set_token(token(sub="bob"))
        await wait_until(lambda: client.connections == 2, "a connection with the new token")
        with anyio.fail_after(20):
            await client.synced()
        body = client.doc.get("body", type=Text)
        body += "by bob"
        with anyio.fail_after(20):
            await client.flush()
    # The edit's frame (coalesced a moment after the edit) names who made it.
    auth = {"Authorization": f"Bearer {token()}"}
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=10) as http:
        frames: list[dict] = []
        with anyio.fail_after(20):
            while not frames:
                await anyio.sleep(0.2)  # the delta endpoint allows one call per 100 ms
                answer = (await http.get("/sync/v1/delta?since=0")).json()
                assert "frames" in answer, answer
                frames = answer["frames"]
    assert [frame["who"] for frame in frames] == ["bob"]


async def test_the_callers_error_and_cancellation_pass_through() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="the caller's"):
        async with DocClient(nobody, "note/x", backoff=fast_backoff()) as client:
            await wait_until(lambda: client.attempts >= 2, "two attempts")
            raise ValueError("the caller's")
    assert client.stopped and client.error is None
    assert "cannot connect" in (client.last_problem or "")
    with anyio.move_on_after(0.5) as scope:
        async with DocClient(nobody, "note/x") as client:
            await client.synced()  # never: the scope ends it
    assert scope.cancelled_caught and client.stopped and client.state == "offline"
