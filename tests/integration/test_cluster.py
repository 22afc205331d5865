"""Several real ``crdt-sync serve`` nodes on one PostgreSQL store and Redis (issue 12).

Every node is the real console entry point (:mod:`tests.cluster`): a throwaway
database per cluster, a Redis prefix of its own, and for the outage and stale-replica
tests a private ``redis-server`` that the test stops or cuts (never the machine's).
Clients are what users run: httpx for the HTTP API, ``websockets`` for the frame feed,
``crdt_sync.client`` as a Yjs editor.

Every wait is bounded; when a test fails its nodes' logs are printed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import redis
import websockets
from pycrdt import Doc, Map, Text

from crdt_sync.client import YjsClient, connect
from tests.cluster import Cluster, PrivateRedis, throwaway_database
from tests.integration.test_durability import doc_from, snapshot
from tests.integration.test_sync_feed import FrameSocket, all_frames, feed_url, mutate
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.anyio

#: Fast feeds; info logs (the debug ones bury what a failure's log tail should show).
FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50", "--log-level", "info")


# -- clusters ----------------------------------------------------------------------------


def shows_logs(test: Callable) -> Callable:
    """Print the cluster's node logs when the test fails (its ``cluster`` argument, or
    every cluster a ``clusters`` factory started)."""

    @functools.wraps(test)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await test(*args, **kwargs)
        except BaseException as exc:
            for value in kwargs.values():
                for cluster in getattr(value, "started", [value]):
                    if isinstance(cluster, Cluster):
                        print(cluster.logs())
            # A failure inside a client task group arrives wrapped: show it plainly.
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            raise exc from None

    return wrapper


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes on the machine's Redis, shared by the tests that harm no node."""
    with (
        throwaway_database() as url,
        Cluster(tmp_path_factory.mktemp("cluster"), url, size=3, args=FAST) as nodes,
    ):
        yield nodes


class Clusters:
    """Starts clusters of a test's own (a database each); stops them all at the end."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.stack = stack
        self.started: list[Cluster] = []

    def __call__(self, size: int = 3, *, redis_url: str | None = None, args=()) -> Cluster:
        url = self.stack.enter_context(throwaway_database())
        workdir = self.workdir / f"cluster-{len(self.started)}"
        workdir.mkdir()
        extra = {} if redis_url is None else {"redis_url": redis_url}
        cluster = Cluster(workdir, url, size=size, args=(*FAST, *args), **extra)
        self.started.append(cluster)
        self.stack.callback(cluster.stop)
        return cluster.start()

    def private_redis(self) -> PrivateRedis:
        server = PrivateRedis(self.workdir).start()
        self.stack.callback(server.stop)
        return server


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Clusters]:
    with contextlib.ExitStack() as stack:
        yield Clusters(tmp_path, stack)


# -- helpers -----------------------------------------------------------------------------


def http(node) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, timeout=30)


async def newest_sid(client: httpx.AsyncClient) -> int:
    response = await client.get("/sync/v1/records", params={"limit": 1})
    assert response.status_code == 200, response.text
    return response.json()["sid"]


async def all_records(client: httpx.AsyncClient, **params: Any) -> list[dict]:
    records: list[dict] = []
    cursor = None
    for _ in range(1000):
        query = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/sync/v1/records", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        records += page["records"]
        cursor = page["next_cursor"]
        if not cursor:
            return records
    raise AssertionError("more than 1000 pages of records")


def framed(client: httpx.AsyncClient, since: int, record_id: str, status: str) -> Callable:
    """For :func:`eventually`: the frames of ``record_id`` once one set ``status``."""

    async def check() -> Any:
        mine = [f for f in await all_frames(client, since) if f["id"] == record_id]
        seen = any(f["p"].get("status") == status for f in mine)
        return mine if seen else Miss(mine)

    return check


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Await ``check()`` (a coroutine function returning a value or None/False) until
    truthy; fail after ``timeout`` s with what it returned last."""
    last: Any = None
    with anyio.move_on_after(timeout):
        while True:
            last = await check()
            if last and not isinstance(last, Miss):
                return last
            await anyio.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s; last seen: {last!r}")


class Miss:
    """A falsy answer of an ``eventually`` check that says what it saw."""

    def __init__(self, seen: Any) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.seen)


@contextlib.asynccontextmanager
async def editors(*targets: tuple) -> AsyncIterator[list[YjsClient]]:
    """One synced ``crdt_sync.client`` per ``(ws_url, doc name[, Doc])``, each in a task
    of its own (a node that goes away ends only that client's session, never the test)."""
    release = anyio.Event()

    async def hold(url: str, name: str, doc=None, *, task_status: anyio.abc.TaskStatus) -> None:
        try:
            async with connect(url, name, doc) as client:
                with anyio.fail_after(15):
                    await client.synced()
                task_status.started(client)
                await release.wait()
        except* (websockets.ConnectionClosed, OSError):
            pass

    async with anyio.create_task_group() as tg:
        clients = [await tg.start(hold, *target) for target in targets]
        try:
            yield clients
        finally:
            release.set()


def body_of(doc: Doc) -> str:
    return str(doc.get("body", type=Text))


async def node_copy(node, name: str) -> Doc:
    async with http(node) as client:
        response = await client.get(f"/docs/{name}/update")
        assert response.status_code == 200, response.text
        return doc_from(response.content)


async def all_converged(nodes, name: str, clients: list[YjsClient]) -> Any:
    """``Miss`` (saying who holds what) unless every client's doc and every node's copy
    hold the same state; ``clients[i]`` is connected to ``nodes[i]``."""
    states = {f"client on node-{i + 1}": snapshot(c.doc) for i, c in enumerate(clients)}
    for i, node in enumerate(nodes):
        states[f"node-{i + 1}"] = snapshot(await node_copy(node, name))
    first = next(iter(states.values()))
    if all(s == first for s in states.values()):
        return first
    return Miss({who: (sorted(sv.items()), content) for who, (sv, content) in states.items()})


class FeedReader:
    """A frame WebSocket on one node, read in the background into ``frames``."""

    def __init__(self, node, since: int) -> None:
        self.url = feed_url(node, since=since)
        self.frames: list[dict] = []
        self.events: list[dict] = []
        self.closed: str | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus) -> None:
        """Read until the server closes, or until cancelled (the test is done: then
        websockets' close handshake is cancelled too and leaves the socket open, so it
        is aborted here rather than collected unclosed at the end of the module)."""
        opened = None
        try:
            async with websockets.connect(self.url, max_size=None) as ws:
                opened = ws
                task_status.started()
                async for raw in ws:
                    message = json.loads(raw)
                    if isinstance(message, list):
                        self.frames += message
                    else:
                        self.events.append(message)
                self.closed = f"closed {ws.close_code}"
        except websockets.ConnectionClosed as exc:
            self.closed = f"closed {exc}"
        finally:
            transport = getattr(opened, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()

    @property
    def sids(self) -> list[int]:
        return [f["sid"] for f in self.frames]


# -- one feed, many nodes ----------------------------------------------------------------


@shows_logs
async def test_mutation_on_node1_reaches_feed_on_node3_and_editor_on_node2(
    cluster: Cluster,
) -> None:
    n1, n2, n3 = cluster.nodes
    name = "note/fanout-1"
    async with http(n1) as h1, http(n2) as h2, http(n3) as h3:
        since = await newest_sid(h3)
        async with websockets.connect(feed_url(n3, since=since)) as ws:
            feed = FrameSocket(ws)
            async with editors((n2.ws_url, name)) as [editor]:
                # The editor on node 2 creates the record; node 3's feed frames it.
                editor.doc["body"] = body = Text("hello")
                editor.doc["fields"] = fields = Map()
                await editor.flush()
                await feed.pump(
                    lambda s: any(f["id"] == "fanout-1" and f["op"] == "i" for f in s.frames), 15
                )
                # A mutation on node 1 reaches the editor on node 2 live, and node 3's feed.
                [result] = await mutate(
                    h1,
                    {
                        "t": "note",
                        "id": "fanout-1",
                        "op": "u",
                        "p": {"body": "hello world", "status": "done"},
                        "client_tx_id": "fanout-tx-1",
                    },
                )
                assert result["status"] == 200 and result["sid"] > since, result
                with anyio.fail_after(10):
                    while not (str(body) == "hello world" and fields.get("status") == "done"):
                        await anyio.sleep(0.01)
                await feed.frames_until(result["sid"], timeout=10)
                mine = [f for f in feed.frames if f["id"] == "fanout-1"]
                assert mine[-1]["sid"] == result["sid"], mine
                assert mine[-1]["op"] == "u" and mine[-1]["p"] == {
                    "body": "hello world",
                    "status": "done",
                }
                assert mine[-1]["ctx"]["client_tx_id"] == "fanout-tx-1"

                # The editor types on node 2; node 1's records follow.
                body += "!"
                await editor.flush()

                async def on_node1() -> Any:
                    rows = await all_records(h1, t="note")
                    row = next((r for r in rows if r["id"] == "fanout-1"), None)
                    if row and row["fields"] == {"body": "hello world!", "status": "done"}:
                        return row
                    return Miss(row)

                row = await eventually(on_node1, 10, "node 1's record of the editor's typing")
                await feed.frames_until(row["sid"], timeout=10)

            # What the feed on node 3 received is the log from `since`, in order.
            log = await all_frames(h3, since)
            assert feed.frames == log[: len(feed.frames)]
            sids = [f["sid"] for f in feed.frames]
            assert sids == sorted(set(sids))

        # The log and the records read the same from every node, to the byte.
        deltas = []
        records = []
        for client in (h1, h2, h3):
            response = await client.get("/sync/v1/delta", params={"since": 0, "limit": 1000})
            assert response.status_code == 200, response.text
            deltas.append(response.content)
            response = await client.get("/sync/v1/records", params={"limit": 1000})
            assert response.status_code == 200, response.text
            records.append(response.content)
        assert deltas[0] == deltas[1] == deltas[2], [d[-300:] for d in deltas]
        rows = [json.loads(r)["records"] for r in records]
        assert rows[0] == rows[1] == rows[2], [r[-300:] for r in records]
        # The records equal the merged doc state (as any node serves it).
        for node in cluster.nodes:
            doc = await node_copy(node, name)
            merged = {
                "body": body_of(doc),
                **doc.get("fields", type=Map).to_py(),
            }
            row = next(r for r in json.loads(records[0])["records"] if r["id"] == "fanout-1")
            assert row["fields"] == merged == {"body": "hello world!", "status": "done"}


@shows_logs
async def test_a_yjs_edit_held_by_every_node_is_framed_once(cluster: Cluster) -> None:
    # Every node holding the record drafts the change it sees; the store logs it once.
    n1, n2, n3 = cluster.nodes
    name = "note/once-1"
    async with http(n1) as h1:
        since = await newest_sid(h1)
        async with editors((n1.ws_url, name), (n2.ws_url, name), (n3.ws_url, name)) as [a, b, c]:
            a.doc["fields"] = fields = Map()
            await a.flush()
            fields["status"] = "open"
            await a.flush()

            async def held_everywhere() -> Any:
                seen = [e.doc.get("fields", type=Map).to_py() for e in (b, c)]
                return seen if all(s == {"status": "open"} for s in seen) else Miss(seen)

            await eventually(held_everywhere, 10, "the edit on every node")

            # Framed apart (not merged in one coalescing window of node-1).
            await eventually(framed(h1, since, "once-1", "open"), 15, "open framed")
            fields["status"] = "done"
            await a.flush()
            await eventually(framed(h1, since, "once-1", "done"), 15, "done framed")
            # Long enough for every node's coalescing window and its commit.
            await anyio.sleep(1.5)
            mine = [f for f in await all_frames(h1, since) if f["id"] == "once-1"]
    statuses = [f["p"].get("status") for f in mine if "status" in f["p"]]
    assert statuses == ["open", "done"], mine
    assert mine[0]["op"] == "i", mine


@shows_logs
async def test_a_node_that_lags_behind_never_moves_a_record_back(tmp_path: Path) -> None:
    # node-2 reaches the store through a relay the test holds: its draft of "open"
    # (seen from node-1) commits after node-1 framed "done". Drafted from an older view
    # than the record row's, it is stale (persistence.framing.settle): no "open"
    # again, then "done" again, in the log.
    relay = TcpRelay()
    await relay.start()
    name = "note/lag-1"
    with throwaway_database() as url:
        behind = (
            "--database-url",
            f"postgresql://postgres@127.0.0.1:{relay.port}/{url.rsplit('/', 1)[1]}",
        )
        nodes = Cluster(tmp_path, url, size=2, args=FAST, node_args={1: behind})
        await anyio.to_thread.run_sync(nodes.start)  # the relay runs on this loop
        try:
            n1, n2 = nodes.nodes
            async with http(n1) as h1, http(n2) as h2:
                since = await newest_sid(h1)
                async with editors((n1.ws_url, name), (n2.ws_url, name)) as [a, b]:
                    relay.hold()
                    a.doc["fields"] = fields = Map()
                    fields["status"] = "open"
                    await a.flush()

                    async def held() -> Any:
                        seen = b.doc.get("fields", type=Map).to_py()
                        return seen if seen == {"status": "open"} else Miss(seen)

                    await eventually(held, 10, "the edit on node-2")

                    await eventually(
                        framed(h1, since, "lag-1", "open"), 15, "open framed by node-1"
                    )
                    fields["status"] = "done"
                    await a.flush()
                    await eventually(
                        framed(h1, since, "lag-1", "done"), 15, "done framed by node-1"
                    )
                    relay.release()
                    # A write queued on node-2 after its drafts: once it is answered,
                    # they are committed (one writer, queue order).
                    barrier = {"t": "note", "id": "lag-2", "op": "i", "p": {"n": 1}}
                    [answer] = await mutate(h2, barrier)
                    assert answer["status"] == 201, answer
                mine = [f for f in await all_frames(h1, since) if f["id"] == "lag-1"]
                [record] = [r for r in await all_records(h1) if r["id"] == "lag-1"]
        except BaseException:
            print(nodes.logs())
            raise
        finally:
            relay.release()
            await anyio.to_thread.run_sync(nodes.stop)
            await relay.stop()
    statuses = [f["p"].get("status") for f in mine if "status" in f["p"]]
    assert statuses == ["open", "done"], mine
    assert record["fields"] == {"status": "done"}, record


@shows_logs
async def test_mutations_are_idempotent_across_nodes(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    async with http(n1) as h1, http(n2) as h2, http(n3) as h3:
        since = await newest_sid(h1)
        insert = {"t": "task", "id": "idem-1", "op": "i", "p": {"n": 1}, "client_tx_id": "idem-a"}
        [first] = await mutate(h1, insert)
        assert first["status"] == 201 and "replayed" not in first, first
        for client in (h2, h3):
            [again] = await mutate(client, insert)
            assert again.pop("replayed") is True, again
            assert again == first
        # The same key on every node at once (an offline queue flushed through a balancer).
        update = {"t": "task", "id": "idem-1", "op": "u", "p": {"n": 2}, "client_tx_id": "idem-b"}
        results: list[dict] = []

        async def post(client: httpx.AsyncClient) -> None:
            results.extend(await mutate(client, update))

        async with anyio.create_task_group() as tg:
            for client in (h1, h2, h3) * 3:
                tg.start_soon(post, client)
        fresh = [r for r in results if not r.get("replayed")]
        assert len(fresh) == 1, results
        assert all({k: v for k, v in r.items() if k != "replayed"} == fresh[0] for r in results)
        frames = await all_frames(h2, since)
        keys = [f["ctx"]["client_tx_id"] for f in frames if f["id"] == "idem-1"]
        assert keys == ["idem-a", "idem-b"], frames
        for client in (h1, h2, h3):
            rows = await all_records(client, t="task")
            assert [r["fields"] for r in rows if r["id"] == "idem-1"] == [{"n": 2}]


@shows_logs
async def test_a_long_poll_on_one_node_wakes_for_a_batch_on_another(cluster: Cluster) -> None:
    n1, n2, _ = cluster.nodes
    async with http(n1) as h1, http(n2) as h2:
        since = await newest_sid(h1)
        answer: dict[str, Any] = {}

        async def poll() -> None:
            answer["r"] = await h1.get(
                "/sync/v1/delta", params={"since": since, "live": "1", "timeout_ms": "50000"}
            )

        with anyio.fail_after(30):  # far below the poll's own 50 s
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.3)
                response = await h2.post(
                    "/sync/v1/mutations",
                    json={
                        "mutations": [
                            {"t": "task", "id": f"lp-{i}", "op": "i", "p": {"n": i}}
                            for i in range(3)
                        ]
                    },
                )
        body = response.json()
        sids = [r["sid"] for r in body["results"]]
        page = answer["r"].json()
        # Committed on node 2 in one transaction: node 1's poll answers all three at once.
        assert [f["sid"] for f in page["frames"]] == sids, page
        assert {f["tx"] for f in page["frames"]} == {body["tx"]}
        assert sids == list(range(sids[0], sids[0] + 3))


# -- kill -9 mid-stream ------------------------------------------------------------------


@shows_logs
async def test_kill9_mid_stream_loses_no_acknowledged_mutation(clusters: Clusters) -> None:
    cluster = clusters(3)
    n1, n2, n3 = cluster.nodes
    posts_per_writer = 60
    kill_after = 15  # acknowledged posts of the writer on node 1
    async with http(n2) as h2:
        [created] = await mutate(h2, {"t": "k9", "id": "shared", "op": "i", "p": {"start": 1}})
        since = created["sid"] - 1
    readers = [FeedReader(n2, since), FeedReader(n3, since)]
    acked: dict[str, dict] = {}  # client_tx_id -> result
    last_of: dict[int, int] = {}
    killed = anyio.Event()
    failovers: list[str] = []

    def body(w: int, i: int) -> dict:
        return {
            "mutations": [
                {
                    "t": "k9",
                    "id": f"{w}-{i}",
                    "op": "i",
                    "p": {"w": w, "i": i},
                    "client_tx_id": f"k9-{w}-{i}",
                },
                {
                    "t": "k9",
                    "id": "shared",
                    "op": "u",
                    "p": {f"w{w}": i},
                    "client_tx_id": f"k9-{w}-{i}-shared",
                },
            ]
        }

    async def writer(w: int, nodes: list) -> None:
        """Posts in order; when its node dies, replays the unanswered post (same
        client_tx_ids) on the next node and goes on there, as a client behind a
        balancer would."""
        clients = [http(node) for node in nodes]
        try:
            at = 0
            for i in range(posts_per_writer):
                for _ in range(len(clients)):
                    try:
                        response = await clients[at].post("/sync/v1/mutations", json=body(w, i))
                    except httpx.TransportError as exc:
                        failovers.append(f"writer {w} post {i}: {exc!r}")
                        at += 1
                        continue
                    if response.status_code == 503:
                        at += 1
                        continue
                    assert response.status_code == 200, response.text
                    for result in response.json()["results"]:
                        assert result["status"] in (200, 201), result
                        acked[result["client_tx_id"]] = result
                    last_of[w] = i
                    break
                else:
                    pytest.fail(f"writer {w}: post {i} refused by every node")
                if w == 0 and i + 1 == kill_after:
                    # Kill node 1 while this writer has its next post in flight.
                    async def kill_soon() -> None:
                        await anyio.sleep(0.002)
                        assert n1.proc is not None
                        n1.proc.send_signal(signal.SIGKILL)
                        killed.set()

                    tg_kill.start_soon(kill_soon)
        finally:
            for client in clients:
                await client.aclose()

    async with anyio.create_task_group() as tg:
        for reader in readers:
            await tg.start(reader.run)
        async with anyio.create_task_group() as tg_kill:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as writers:
                    writers.start_soon(writer, 0, [n1, n2])
                    writers.start_soon(writer, 1, [n2, n3])
                    writers.start_soon(writer, 2, [n3, n2])
        assert killed.is_set()
        n1.proc.wait(10)
        assert len(acked) == 3 * posts_per_writer * 2

        async with http(n2) as h2, http(n3) as h3:
            log = await all_frames(h2, since)
            assert log == await all_frames(h3, since), "the nodes serve different logs"
            sids = [f["sid"] for f in log]
            assert sids == sorted(set(sids))
            # Every acknowledged mutation is in the log exactly once, with its result's sid.
            counts: dict[str, int] = {}
            for frame in log:
                key = (frame.get("ctx") or {}).get("client_tx_id")
                if key is not None:
                    counts[key] = counts.get(key, 0) + 1
            twice = {k: n for k, n in counts.items() if n != 1}
            assert not twice, f"mutations framed more than once: {twice}"
            missing = sorted(set(acked) - set(counts))
            assert not missing, f"acknowledged but not in the log: {missing[:10]}"
            by_key = {f["ctx"]["client_tx_id"]: f["sid"] for f in log if f.get("ctx")}
            wrong = [k for k, r in acked.items() if r["sid"] != by_key[k]]
            assert not wrong, f"results whose sid is not their frame's: {wrong[:10]}"
            # And in the records, as the last acknowledged writes left them.
            for client in (h2, h3):
                rows = {r["id"]: r["fields"] for r in await all_records(client, t="k9")}
                assert rows.pop("shared") == {
                    "start": 1,
                    **{f"w{w}": last_of[w] for w in range(3)},
                }
                assert rows == {
                    f"{w}-{i}": {"w": w, "i": i} for w in range(3) for i in range(posts_per_writer)
                }

        # Subscribers on the surviving nodes saw exactly the log: no gap, no duplicate.
        with anyio.move_on_after(20):
            while any(len(r.frames) < len(log) and not r.closed for r in readers):
                await anyio.sleep(0.05)
        for reader in readers:
            assert reader.closed is None, reader.closed
            assert reader.sids == sids, (
                f"{reader.url}: {len(reader.sids)} frames; missing "
                f"{sorted(set(sids) - set(reader.sids))[:10]}, extra "
                f"{sorted(set(reader.sids) - set(sids))[:10]}"
            )
        tg.cancel_scope.cancel()
    print(f"failovers after the kill -9 of node 1: {failovers}")


# -- Redis outage ------------------------------------------------------------------------


@pytest.mark.parametrize("back", ["while_typing", "after_typing"])
@shows_logs
async def test_redis_cut_mid_stream_every_node_converges(clusters: Clusters, back: str) -> None:
    """Redis stops while clients on every node type, and comes back on the same port
    either while they still type or after the last edit (then only the nodes'
    re-reading of the store on reconnect can carry what crossed no bus)."""
    private = clusters.private_redis()
    cluster = clusters(3, redis_url=private.url)
    name = "notes/outage"
    edits = 60
    async with editors(*[(node.ws_url, name) for node in cluster.nodes]) as clients:
        for client in clients:
            client.doc["body"] = Text()
        typed = {i: 0 for i in range(3)}
        letters = "abc"
        progress = [0]
        phase = {
            "down_at": edits // 4,
            "up_at": edits * 3 // 4 if back == "while_typing" else edits,
        }

        async def typist(i: int, client: YjsClient) -> None:
            rng = random.Random(i)
            text = client.doc.get("body", type=Text)
            for n in range(edits):
                text.insert(rng.randint(0, len(text)), letters[i])
                typed[i] += 1
                if i == 0:
                    progress[0] = n
                await anyio.sleep(0.02)
            if i == 0:
                progress[0] = edits

        async def outage() -> None:
            with anyio.fail_after(30):
                while progress[0] < phase["down_at"]:
                    await anyio.sleep(0.01)
                private.stop()
                while progress[0] < phase["up_at"]:
                    await anyio.sleep(0.01)
                private.start()

        async with anyio.create_task_group() as tg:
            tg.start_soon(outage)
            for i, client in enumerate(clients):
                tg.start_soon(typist, i, client)
        assert private.proc is not None, "Redis was not started again"

        state = await eventually(
            lambda: all_converged(cluster.nodes, name, clients),
            20,
            "every node and client converged after the Redis outage",
        )
        final = state[1]["body"]
        for i in range(3):
            assert final.count(letters[i]) == typed[i] == edits, (letters[i], final)
        assert not any(c.closed.is_set() for c in clients), "a client was disconnected"
    for node in cluster.nodes:
        assert node.proc is not None and node.proc.poll() is None, node.log()[-2000:]
        warned = [
            line
            for line in node.log().splitlines()
            if "WARNING" in line and "redis" in line.lower()
        ]
        assert warned, "a node did not log the Redis outage"


# -- stale replica -----------------------------------------------------------------------


def redis_connections_of(pid: int, redis_port: int) -> set[int]:
    """Local ports of ``pid``'s (and its children's) TCP connections to ``redis_port``."""
    pids = {pid}
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.add(int(child))
    inodes: set[str] = set()
    for p in pids:
        for fd in Path(f"/proc/{p}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == redis_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def cut_from_redis(private: PrivateRedis, pid: int) -> int:
    """``CLIENT KILL`` every connection of the node ``pid`` on ``private``."""
    ports = redis_connections_of(pid, private.port)
    assert ports, f"node {pid} has no connection to Redis on {private.port}"
    admin = redis.Redis(host="127.0.0.1", port=private.port)
    try:
        killed = 0
        for entry in admin.client_list():
            if int(entry["addr"].rsplit(":", 1)[1]) in ports:
                killed += admin.client_kill_filter(_id=entry["id"])
        return killed
    finally:
        admin.close()


@shows_logs
async def test_stale_replica_loses_and_resurrects_nothing(clusters: Clusters) -> None:
    """Node 3 misses updates (frozen, its Redis connections killed) while clients on
    nodes 1 and 2 delete text; its own client, as stale as it, types meanwhile. Then
    nothing deleted comes back, nothing typed is lost, every node agrees. A low
    ``--compact-updates`` lets compactions run on the nodes while it happens."""
    private = clusters.private_redis()
    cluster = clusters(3, redis_url=private.url, args=("--compact-updates", "4"))
    n3 = cluster.nodes[2]
    name = "notes/stale"
    original = "The quick brown fox jumps over the lazy dog."
    async with editors(*[(node.ws_url, name) for node in cluster.nodes]) as [a, b, s]:
        a.doc["body"] = a_text = Text()
        a_text += original
        await a.flush()
        for client in (b, s):
            with anyio.fail_after(10):
                while body_of(client.doc) != original:
                    await anyio.sleep(0.01)
        b_text = b.doc.get("body", type=Text)
        s_text = s.doc.get("body", type=Text)

        assert n3.proc is not None
        n3.proc.send_signal(signal.SIGSTOP)
        try:
            assert cut_from_redis(private, n3.proc.pid) >= 1
            # Deletes on nodes 1 and 2, and more edits than --compact-updates.
            del a_text[original.index("quick ") : original.index("quick ") + len("quick ")]
            at = str(b_text).index(" lazy")
            del b_text[at : at + len(" lazy")]
            for char in " END":
                a_text += char
            expected_live = "The brown fox jumps over the dog. END"
            with anyio.fail_after(10):
                while not body_of(a.doc) == body_of(b.doc) == expected_live:
                    await anyio.sleep(0.01)
            # Node 3's client has seen none of it, and types into its stale copy.
            assert str(s_text) == original
            s_text.insert(original.index("quick") + len("quick"), "[S1]")
            s_text.insert(str(s_text).index("lazy") + 2, "[S2]")
            await s.flush()
            await anyio.sleep(0.3)
        finally:
            n3.proc.send_signal(signal.SIGCONT)

        reference = Doc()
        for client in (a, b, s):
            reference.apply_update(client.doc.get_update())
        expected = body_of(reference)
        assert "quick" not in expected and "lazy" not in expected, expected
        assert "[S1]" in expected and "[S2]" in expected and "END" in expected, expected

        state = await eventually(
            lambda: all_converged(cluster.nodes, name, [a, b, s]),
            20,
            "every node and client converged after node 3 came back",
        )
        assert state[1]["body"] == expected, state
        assert not any(c.closed.is_set() for c in (a, b, s)), "a client was disconnected"

    # A newcomer on each node, and the record on each node, agree too.
    for node in cluster.nodes:
        async with editors((node.ws_url, name)) as [fresh]:
            assert body_of(fresh.doc) == expected
        async with http(node) as client:

            async def record(client: httpx.AsyncClient = client) -> Any:
                rows = await all_records(client, t="notes")
                row = next((r for r in rows if r["id"] == "stale"), None)
                return row if row and row["fields"] == {"body": expected} else Miss(row)

            await eventually(record, 10, f"the record on {node.url}")


# -- SIGTERM hands clients over ----------------------------------------------------------


@shows_logs
async def test_sigterm_closes_clients_1001_and_they_carry_on_elsewhere(
    clusters: Clusters,
) -> None:
    cluster = clusters(2)
    n1, n2 = cluster.nodes
    name = "notes/handoff"
    doc = Doc()
    async with editors((n2.ws_url, name)) as [other]:
        async with editors((n1.ws_url, name, doc)) as [leaving]:
            doc["body"] = text = Text()
            for piece in ["typed on node 1. ", "more. ", "last words before SIGTERM. "]:
                text += piece
            await leaving.flush()
            before = "typed on node 1. more. last words before SIGTERM. "

            async def on_node1() -> Any:
                seen = body_of(await node_copy(n1, name))
                return seen == before or Miss(seen)

            await eventually(on_node1, 10, "node 1 holding the editor's text")
            async with websockets.connect(feed_url(n1)) as frames:
                # Its session is running once it answers a ping (one still being
                # admitted when SIGTERM arrives is closed by uvicorn, 1012).
                await frames.send(json.dumps({"type": "ping"}))
                with anyio.fail_after(10):
                    assert json.loads(await frames.recv())["type"] == "pong"
                assert n1.proc is not None
                n1.proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(15):
                    await leaving.closed.wait()
                assert leaving.close_code == 1001
                with anyio.fail_after(15), contextlib.suppress(websockets.ConnectionClosed):
                    async for _ in frames:
                        pass
                assert frames.close_code == 1001
        with anyio.fail_after(15):
            while n1.proc.poll() is None:
                await anyio.sleep(0.05)
        assert n1.proc.returncode == 0, n1.log()[-2000:]
        n1.stop()  # exited: releases its pipes
        # What node 1 had is in the shared store, before anyone reconnects.
        assert body_of(await node_copy(n2, name)) == before
        # The same doc reconnects to node 2 and goes on; nothing typed before is lost.
        async with editors((n2.ws_url, name, doc)):
            text += "typed on node 2."
            expected = "typed on node 1. more. last words before SIGTERM. typed on node 2."
            with anyio.fail_after(10):
                while body_of(other.doc) != expected:
                    await anyio.sleep(0.01)
        assert body_of(await node_copy(n2, name)) == expected
    restarted = cluster.restart(0)
    assert body_of(await node_copy(restarted, name)) == expected
