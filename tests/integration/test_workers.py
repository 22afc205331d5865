"""``crdt-sync serve --workers 2``: two processes on one port, each a node of the cluster
on this machine's PostgreSQL and Redis (a throwaway database, a Redis prefix of its own).

Clients are told apart by worker through ``/healthz`` (``node``, ``connections``): each
HTTP request on a fresh connection lands on either worker, as the kernel spreads them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Array, Doc

from crdt_sync.client import connect
from tests.cluster import REDIS_URL, throwaway_database
from tests.server_process import ServerProcess

pytestmark = pytest.mark.anyio

WRITES = 20  # per writer


@pytest.fixture
def database_url() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


@pytest.fixture
def workers(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path,
        "--workers",
        "2",
        "--database-url",
        f"{database_url}?connect_timeout=20",
        "--redis-url",
        REDIS_URL,
        "--redis-prefix",
        f"crdt-sync-test-{secrets.token_hex(4)}",
    )
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.__exit__(None, None, None)  # stops it if running; closes its pipes


async def per_node(url: str, timeout: float = 20) -> dict[str, dict[str, Any]]:
    """``/healthz`` of both workers (fresh connections until both answered)."""
    seen: dict[str, dict[str, Any]] = {}
    limits = httpx.Limits(max_keepalive_connections=0)
    with anyio.fail_after(timeout):
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
            while len(seen) < 2:
                body = (await http.get("/healthz")).json()
                seen[body["node"]] = body
    return seen


def pid_of(node: str) -> int:
    return int(node.rsplit("-", 1)[1])  # host-port-pid


class Placed:
    """Yjs clients of one room, each known by the worker (node id) it landed on."""

    def __init__(self, server: ServerProcess, room: str) -> None:
        self.server, self.room = server, room
        self.clients: list[tuple[str, Any]] = []
        self._stack = contextlib.AsyncExitStack()

    async def add(self) -> tuple[str, Any]:
        before = await per_node(self.server.url)
        client = await self._stack.enter_async_context(connect(self.server.ws_url, self.room))
        with anyio.fail_after(10):
            await client.synced()
        with anyio.fail_after(20):
            while True:
                after = await per_node(self.server.url)
                grown = [
                    n
                    for n, body in after.items()
                    if body["connections"] > before.get(n, {}).get("connections", 0)
                ]
                if len(grown) == 1:
                    break
                await anyio.sleep(0.05)
        self.clients.append((grown[0], client))
        return grown[0], client

    def on(self, node: str) -> list[Any]:
        return [c for n, c in self.clients if n == node]

    async def __aenter__(self) -> Placed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def placed_on_both(server: ServerProcess, room: str, each: int) -> AsyncIterator[Placed]:
    """Clients on ``room`` until each worker holds at least ``each`` of them."""
    async with Placed(server, room) as placed:
        for _ in range(40):
            nodes = {n for n, _ in placed.clients}
            if len(nodes) == 2 and all(len(placed.on(n)) >= each for n in nodes):
                break
            await placed.add()
        else:
            pytest.fail(f"40 clients did not spread over both workers: {placed.clients}")
        yield placed


def written(doc: Doc, key: str) -> list[int]:
    return list(doc.get(key, type=Array))


async def test_two_workers_one_port_share_docs_in_order_and_awareness(
    workers: ServerProcess,
) -> None:
    assert "workers: 2)" in workers.ready_line
    assert workers.ready_line.count("crdt-sync ready on") == 1
    nodes = await per_node(workers.url)
    assert len(nodes) == 2 and all(b["status"] == "ok" for b in nodes.values())

    async with placed_on_both(workers, "notes/workers", each=2) as placed:
        a, b = sorted({n for n, _ in placed.clients})
        writer_a, writer_b = placed.on(a)[0], placed.on(b)[0]
        arrays = {}
        for key, writer in (("from-a", writer_a), ("from-b", writer_b)):
            writer.doc[key] = arrays[key] = Array()
        for i in range(WRITES):  # interleaved, each writer in its own order
            arrays["from-a"].append(i)
            arrays["from-b"].append(i)
            if i % 5 == 0:
                await anyio.sleep(0.01)
        with anyio.fail_after(20):
            for _, client in placed.clients:
                while not (
                    written(client.doc, "from-a") == list(range(WRITES))
                    and written(client.doc, "from-b") == list(range(WRITES))
                ):
                    await anyio.sleep(0.02)

        # Awareness crosses workers: a state set on worker a reaches a client on b.
        watcher = placed.on(b)[1]
        shown = placed.on(a)[1]
        shown.awareness.set_local_state({"user": {"name": "on-a"}})
        with anyio.fail_after(10):
            while {"user": {"name": "on-a"}} not in watcher.remote_states.values():
                await anyio.sleep(0.02)

        # SIGKILL worker a: its clients are cut off, the others see their awareness
        # removed (the worker's lease lapses), the supervisor starts a new worker, and
        # nothing the others had received is lost.
        os.kill(pid_of(a), signal.SIGKILL)
        with anyio.fail_after(10):
            for client in placed.on(a):
                await client.closed.wait()
        with anyio.fail_after(20):
            while {"user": {"name": "on-a"}} in watcher.remote_states.values():
                await anyio.sleep(0.05)
        with anyio.fail_after(30):
            while True:
                now = await per_node(workers.url)
                if a not in now and len(now) == 2:
                    break
                await anyio.sleep(0.2)
        assert workers.proc is not None and workers.proc.poll() is None
        async with Placed(workers, "notes/workers") as later:
            for _ in range(6):
                _, client = await later.add()
                assert written(client.doc, "from-a") == list(range(WRITES))
                assert written(client.doc, "from-b") == list(range(WRITES))
    assert "exited (killed by SIGKILL)" in workers.log()


async def test_sigterm_stops_every_worker_and_closes_clients_1001(
    workers: ServerProcess,
) -> None:
    async with placed_on_both(workers, "notes/stop", each=1) as placed:
        assert workers.proc is not None
        pids = [pid_of(node) for node in await per_node(workers.url)]
        # As systemd's default KillMode does: SIGTERM to every process of the service at
        # once. Each worker then hears two (its own and the one the parent forwards):
        # one graceful stop all the same, not a "second signal: stop now".
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        await anyio.sleep(0.1)  # two deliveries, not one pending signal
        workers.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            for _, client in placed.clients:
                await client.closed.wait()
        assert {client.close_code for _, client in placed.clients} == {1001}
    with anyio.fail_after(30):
        while workers.proc.poll() is None:
            await anyio.sleep(0.05)
    assert workers.proc.returncode == 0, workers.log()[-3000:]
    assert "stopped 2 workers" in workers.log()
    assert "did not stop cleanly" not in workers.log()
    assert "again: stopping now" not in workers.log()
    assert workers.log().count("received SIGTERM again: already stopping") == 2


def test_workers_without_a_shared_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="needs --database-url and --redis-url"):
        ServerProcess(tmp_path, "--workers", "2").start(timeout=30)


def test_a_worker_failing_at_startup_stops_them_all(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path,
        "--workers",
        "2",
        "--database-url",
        f"postgresql://postgres@127.0.0.1:5432/crdt_sync_missing_{secrets.token_hex(4)}",
        "--redis-url",
        REDIS_URL,
    )
    with pytest.raises(RuntimeError, match="exited before ready"):
        server.start(timeout=60)
    assert server.proc is not None and server.proc.returncode == 1
    log = server.log()
    assert "failed at startup" in log and "stopping the others" in log
    assert "Traceback" not in log.split("failed at startup", 1)[1]
