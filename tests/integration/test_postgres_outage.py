"""A real ``crdt-sync serve --database-url`` node whose PostgreSQL goes away and comes back.

The node reaches the machine's PostgreSQL (never stopped here) through a
:class:`~tests.tcp_relay.TcpRelay` of the test: cutting the relay resets every
connection and closes the port, as a network that drops would. While it is cut,
writes answer 503 with a JSON body (never 500, never a hang) and Yjs writers are
closed with 4503, ``/readyz`` fails and ``/healthz`` names the store; reads of a
room in memory are still served. Once the relay is back the node is ready again by
itself (no restart), takes writes, and the store holds every write acknowledged
before, during (none) and after the outage.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Doc, Text

from crdt_sync.client import YjsClient, connect
from persistence.postgres import PostgresStore
from rooms.close_codes import CloseCode
from tests.cluster import throwaway_database
from tests.server_process import ServerProcess
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.anyio

TIMEOUT = 90  # seconds: the whole scenario, outage included
REQUEST_TIMEOUT = 30  # no request may take longer, store down or not
ORG = "default"  # auth is off


def via(relay: TcpRelay, url: str) -> str:
    """``url`` (on the machine's PostgreSQL) as reached through ``relay``."""
    return f"postgresql://postgres@127.0.0.1:{relay.port}/{url.rsplit('/', 1)[1]}"


@contextlib.asynccontextmanager
async def node_behind(relay: TcpRelay, url: str, workdir: Path) -> AsyncIterator[ServerProcess]:
    """A node on ``url`` through ``relay`` (started off the loop: the relay runs on it)."""
    node = ServerProcess(
        workdir,
        "--database-url",
        via(relay, url),
        "--room-idle-seconds",
        "600",  # rooms stay in memory for the whole test
        "--compact-updates",
        "100000",  # no compaction hides a gap in the log
    )
    await anyio.to_thread.run_sync(node.start)
    try:
        yield node
    finally:
        with anyio.CancelScope(shield=True):
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(TimeoutError):
                    await anyio.to_thread.run_sync(node.stop)
            else:
                await anyio.to_thread.run_sync(node._close_pipes)


class Writer:
    """One Yjs client id typing into ``body``: each update depends on the one before."""

    def __init__(self, client_id: int) -> None:
        self.doc = Doc(client_id=client_id)
        self.text = self.doc.get("body", type=Text)

    def type(self, words: str) -> bytes:
        before = self.doc.get_state()
        self.text += words
        return self.doc.get_update(before)


async def stored_text(url: str, name: str) -> str | None:
    """``body`` of the doc as the store holds it (snapshot plus log), read directly;
    ``None`` if it is not stored. A log with a gap shows only what precedes it."""
    async with PostgresStore(url) as store:
        stored = await store.load(ORG, name)
    if stored is None:
        return None
    doc = Doc()
    for update in ([stored.snapshot] if stored.snapshot else []) + stored.updates:
        doc.apply_update(update)
    return str(doc.get("body", type=Text))


async def stored_record(url: str, t: str, record_id: str) -> dict[str, Any] | None:
    async with PostgresStore(url) as store:
        rows, _ = await store.list_records(ORG, t=t, limit=1000)
    return next((r.fields for r in rows if r.id == record_id), None)


async def until(check: Callable[[], Any], what: str, timeout: float = 30) -> None:
    """Wait (bounded) for ``await check()`` to be true."""
    with anyio.move_on_after(timeout):
        while not await check():
            await anyio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


def assert_json_503(response: httpx.Response, error: str = "store_unavailable") -> dict:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    assert body["detail"], body
    return body


def mutation(record_id: str, op: str, tx: str, **fields: Any) -> dict[str, Any]:
    item = {"t": "task", "id": record_id, "op": op, "p": fields, "client_tx_id": tx}
    return {"mutations": [item]}


async def post_update(http: httpx.AsyncClient, name: str, update: bytes) -> httpx.Response:
    return await http.post(
        f"/docs/{name}/update",
        content=update,
        headers={"content-type": "application/octet-stream"},
    )


@contextlib.asynccontextmanager
async def yjs(node: ServerProcess, name: str) -> AsyncIterator[YjsClient]:
    async with connect(node.ws_url, name) as client:
        with anyio.fail_after(REQUEST_TIMEOUT):
            await client.synced()
        yield client


async def test_postgres_outage_refuses_writes_serves_memory_and_recovers(tmp_path: Path) -> None:
    http_doc = f"notes-{uuid.uuid4().hex[:8]}"
    ws_doc = f"live-{uuid.uuid4().hex[:8]}"
    cold_doc = f"cold-{uuid.uuid4().hex[:8]}"
    writer = Writer(client_id=1001)
    with throwaway_database("crdt_sync_outage") as url:
        relay = TcpRelay()
        await relay.start()
        try:
            with anyio.fail_after(TIMEOUT):
                async with node_behind(relay, url, tmp_path) as node:
                    http = httpx.AsyncClient(base_url=node.url, timeout=REQUEST_TIMEOUT)
                    async with http:
                        docs = (http_doc, ws_doc, cold_doc)
                        await outage_scenario(node, http, relay, url, writer, *docs)
        finally:
            await relay.stop()


async def outage_scenario(
    node: ServerProcess,
    http: httpx.AsyncClient,
    relay: TcpRelay,
    url: str,
    writer: Writer,
    http_doc: str,
    ws_doc: str,
    cold_doc: str,
) -> None:
    # -- before: everything acknowledged -------------------------------------------
    assert (await http.get("/readyz")).status_code == 200
    response = await post_update(http, http_doc, writer.type("one "))
    assert response.status_code == 200 and response.json()["applied"], response.text
    cold = Writer(client_id=3003)
    assert (await post_update(http, cold_doc, cold.type("cold"))).status_code == 200
    response = await http.post("/sync/v1/mutations", json=mutation("1", "i", "tx-1", title="a"))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == 201, response.text
    async with yjs(node, ws_doc) as client:
        client.doc.get("body", type=Text).insert(0, "typed ")
        await until(
            lambda: _equals(stored_text(url, ws_doc), "typed "), "the Yjs update is stored"
        )
    assert (await http.get(f"/docs/{http_doc}")).json()["content"]["body"] == "one "

    # -- cut: every request below in parallel (each waits out the pool's timeout) ------
    async with yjs(node, ws_doc) as client:
        await relay.stop()

        async def http_write() -> None:  # 503 JSON, in bounded time (the client's timeout)
            assert_json_503(await post_update(http, http_doc, writer.type("two ")))

        async def mutation_write() -> None:
            body = assert_json_503(
                await http.post("/sync/v1/mutations", json=mutation("2", "i", "tx-2", title="b"))
            )
            assert [r["status"] for r in body["results"]] == [503], body

        async def yjs_write() -> None:  # the writer is closed with 4503
            client.doc.get("body", type=Text).insert(0, "lost? ")
            with anyio.fail_after(REQUEST_TIMEOUT):
                await client.closed.wait()
            assert client.close_code == CloseCode.STORE_UNAVAILABLE

        async def store_reads() -> None:  # what needs the store: 503 JSON, never 500
            assert_json_503(await http.get("/docs/never-loaded"))
            # A doc not in memory cannot be written either (its room cannot load).
            assert_json_503(await post_update(http, "never-loaded-2", Writer(7).type("x")))

        async def feed_reads() -> None:
            assert_json_503(await http.get("/sync/v1/records"))
            assert_json_503(await http.get("/sync/v1/delta?since=0"))

        async def list_read() -> None:
            assert_json_503(await http.get("/docs"))

        async def cold_yjs() -> None:  # a Yjs join of a doc not in memory: closed, 4503
            async with connect(node.ws_url, f"cold-ws-{uuid.uuid4().hex[:6]}") as cold_client:
                with anyio.fail_after(REQUEST_TIMEOUT):
                    await cold_client.closed.wait()
                assert cold_client.close_code == CloseCode.STORE_UNAVAILABLE

        async with anyio.create_task_group() as tg:
            for check in (
                http_write, mutation_write, yjs_write, store_reads, feed_reads, list_read, cold_yjs
            ):
                tg.start_soon(check)

    # Not ready; /healthz names the store.
    response = await http.get("/readyz")
    assert response.status_code == 503, response.text
    assert "store" in response.json()["problems"], response.text
    response = await http.get("/healthz")
    assert response.status_code == 503, response.text
    health = response.json()
    assert health["status"] == "degraded" and health["store"] != "ok", health
    assert "store" in health["problems"], health

    # A loaded room is read from memory.
    response = await http.get(f"/docs/{http_doc}")
    assert response.status_code == 200, response.text
    assert response.json()["content"]["body"].startswith("one "), response.text
    assert (await http.get(f"/docs/{http_doc}/update")).status_code == 200
    assert node.proc is not None and node.proc.poll() is None, "the node must keep running"

    # -- restore: ready again by itself, writes succeed ------------------------------
    await relay.start()

    async def ready() -> bool:
        return (await http.get("/readyz")).status_code == 200

    await until(ready, "/readyz answers 200 after PostgreSQL is back", timeout=60)
    response = await post_update(http, http_doc, writer.type("three"))
    assert response.status_code == 200 and response.json()["applied"], response.text
    response = await http.post("/sync/v1/mutations", json=mutation("3", "i", "tx-3", title="c"))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == 201, response.text
    async with yjs(node, ws_doc) as client:
        body = client.doc.get("body", type=Text)
        body += "again"
        await until(
            lambda: _contains(stored_text(url, ws_doc), "again"), "a Yjs update after the outage"
        )

    # -- nothing acknowledged is lost: read from the store, not the node -----------
    # "three" was typed after "two " (refused), by the same client: the store must
    # hold what it depends on, or it is not visible when the doc is loaded again.
    text = await stored_text(url, http_doc)
    assert text is not None and text.startswith("one ") and text.endswith("three"), text
    assert await stored_text(url, cold_doc) == "cold"
    assert "typed " in (await stored_text(url, ws_doc) or "")
    assert await stored_record(url, "task", "1") == {"title": "a"}
    assert await stored_record(url, "task", "3") == {"title": "c"}
    # A mutation refused with 503 is not half-applied: retrying it works.
    response = await http.post("/sync/v1/mutations", json=mutation("2", "i", "tx-2", title="b"))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] in (200, 201), response.text
    assert await stored_record(url, "task", "2") == {"title": "b"}


async def _equals(value: Any, expected: str) -> bool:
    return await value == expected


async def _contains(value: Any, part: str) -> bool:
    return part in (await value or "")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the node uses it


def test_a_node_whose_postgres_is_unreachable_at_start_exits_with_one_line(
    tmp_path: Path,
) -> None:
    """No store, no node: it exits (its supervisor starts it again) within the connect
    timeout, with one line naming the database, never a traceback or a hang."""
    port = closed_port()
    node = ServerProcess(tmp_path, "--database-url", f"postgresql://postgres@127.0.0.1:{port}/x")
    with pytest.raises(RuntimeError, match="exited before ready"):
        node.start(timeout=60)
    assert node.proc is not None
    code = node.proc.wait(30)
    node._close_pipes()
    log = node.log()
    assert code == 3, (code, log)  # uvicorn's exit code for a failed startup
    assert "Traceback" not in log, log
    why = [line for line in log.splitlines() if "cannot start:" in line]
    assert len(why) == 1, log
    assert f"cannot open PostgreSQL postgresql://127.0.0.1:{port}/x" in why[0], log
