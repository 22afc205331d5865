"""PostgresStore against the machine's real PostgreSQL (127.0.0.1:5432, user postgres).

One throwaway database per test session (unique name, dropped at the end); tests that
need a database of their own (migrations, outages) create and drop one more. Every
test writes under orgs of its own, so they share the session database safely.

Several nodes are several :class:`PostgresStore` instances on one database, as
several crdt-sync processes would have: their writes race for real in PostgreSQL.
Outages are real too: connections terminated by the server, a database that refuses
new connections, a TCP proxy in front of the server that goes away, a closed port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from pycrdt import Doc, Map, Text

from persistence import outbox, values
from persistence.outbox import EndpointSpec
from persistence.postgres import PostgresStore, ReadUnavailableError
from persistence.postgres.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from persistence.store import (
    Committed,
    Frame,
    FrameBatch,
    FrameDraft,
    MutationReplayed,
    Store,
    StoreClosedError,
    StoreError,
    StoreReadError,
    StoreUnavailableError,
    StoreWriteError,
)
from tests.frame_drafts import frame_draft
from tests.store_backends import admin_connection, throwaway_database
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.anyio

TIMEOUT = 60  # seconds; every test body runs under anyio.fail_after(TIMEOUT)
@pytest.fixture(scope="session")
def session_dsn() -> Iterator[str]:
    with throwaway_database("crdt_sync_test_session") as dsn:
        yield dsn


@pytest.fixture
def org() -> str:
    """An org no other test writes to."""
    return f"org-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(session_dsn: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(session_dsn) as s:
        yield s


@pytest.fixture
async def nodes(session_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database: two crdt-sync nodes."""
    async with PostgresStore(session_dsn) as a, PostgresStore(session_dsn) as b:
        yield a, b


def yupdate(text: str) -> bytes:
    """A Yjs update inserting ``text``; the same bytes for the same text."""
    doc = Doc(client_id=zlib.crc32(text.encode()) + 1)
    doc.get("t", type=Text).insert(0, text)
    return doc.get_update()


def draft(
    t: str,
    id: str,
    op: str = "u",
    p: dict[str, Any] | None = None,
    *,
    update_id: int | None = None,
    who: str | None = "alice",
    ctx: dict[str, Any] | None = None,
) -> FrameDraft:
    p = {"title": f"{t}/{id}"} if p is None else p
    return frame_draft(t, id, op, p, update_id=update_id, who=who, at=1000, ctx=ctx)


async def append(
    store: PostgresStore, org: str, name: str, data: bytes, frames: FrameBatch | None = None
) -> Committed:
    appended = await store.append(org, name, data, actor="alice", at=values.now_ms(), frames=frames)
    return await appended.durable


def doc_of(stored: Any) -> Doc:
    doc = Doc()
    if stored.snapshot is not None:
        doc.apply_update(stored.snapshot)
    for update in stored.updates:
        doc.apply_update(update)
    return doc


# -- one node: the contract --------------------------------------------------------------


async def test_is_a_store_and_appends_get_ids_with_their_predecessor(
    store: PostgresStore, org: str
) -> None:
    assert isinstance(store, Store)
    with anyio.fail_after(TIMEOUT):
        first = await append(store, org, "notes", yupdate("a"))
        assert first.prev_update_id == 0 and first.frames == [] and first.replayed is None
        # Queued one after the other without awaiting: committed in that order.
        queued = [await store.append(org, "notes", yupdate(c), actor="bob", at=5) for c in "bcdef"]
        done = [await a.durable for a in queued]
        chain = [first, *done]
        assert [c.prev_update_id for c in chain[1:]] == [c.update_id for c in chain[:-1]]
        assert all(x.update_id < y.update_id for x, y in itertools.pairwise(chain))

        stored = await store.load(org, "notes")
        assert stored is not None and stored.snapshot is None
        assert stored.updates == [yupdate(c) for c in "abcdef"]
        assert stored.last_update_id == chain[-1].update_id
        assert await store.has_doc(org, "notes")
        assert await store.load(org, "other") is None
        assert not await store.has_doc(org, "other")
        assert await store.load("another-" + org, "notes") is None


async def test_list_docs_by_prefix_with_cursor_in_code_point_order(
    store: PostgresStore, org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        names = ["a/1", "a/2", "a/10", "a/é", "a/Z", "b/1", "a"]
        for name in names:
            await append(store, org, name, yupdate(name))
        await append(store, "another-" + org, "a/3", yupdate("x"))
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page, cursor = await store.list_docs(org, prefix="a/", limit=2, cursor=cursor)
            seen += [d.name for d in page]
            if cursor is None:
                break
        assert seen == sorted(n for n in names if n.startswith("a/"))  # code point order
        assert seen == ["a/1", "a/10", "a/2", "a/Z", "a/é"]
        (info,), _ = await store.list_docs(org, prefix="b/")
        assert (info.name, info.update_count, info.size) == ("b/1", 1, len(yupdate("b/1")))
        with pytest.raises(ValueError, match="cursor"):
            await store.list_docs(org, cursor="not a cursor!")
        with pytest.raises(ValueError, match="limit"):
            await store.list_docs(org, limit=0)


async def test_compact_folds_log_and_deleted_docs_stay_deleted(
    store: PostgresStore, org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        doc = Doc()
        text = doc.get("t", type=Text)
        last = None
        for word in ("one ", "two ", "three "):
            before = doc.get_state()
            text += word
            last = await append(store, org, "d", doc.get_update(before))
        assert last is not None
        await store.compact(org, "d", doc.get_update())
        stored = await store.load(org, "d")
        assert stored is not None and stored.updates == [] and stored.snapshot is not None
        assert stored.last_update_id == last.update_id
        assert str(doc_of(stored).get("t", type=Text)) == "one two three "
        after = await append(store, org, "d", yupdate("x"))
        assert after.prev_update_id == last.update_id  # compaction keeps the chain
        (info,), _ = await store.list_docs(org)
        assert info.update_count == 1

        assert await store.delete(org, "d")
        assert not await store.delete(org, "d")
        await store.compact(org, "d", doc.get_update())  # deleted docs stay deleted
        assert await store.load(org, "d") is None
        assert await store.list_docs(org) == ([], None)
        again = await append(store, org, "d", yupdate("new"))
        assert again.prev_update_id == 0  # a new doc under the old name
        assert (await store.load(org, "d")).updates == [yupdate("new")]  # type: ignore[union-attr]

        await store.compact(org, "never", yupdate("fresh"))  # never stored: created
        fresh = await store.load(org, "never")
        assert fresh is not None and fresh.updates == []
        assert str(doc_of(fresh).get("t", type=Text)) == "fresh"

        with pytest.raises(StoreWriteError, match="compact"):
            await store.compact(org, "never", b"not a yjs update")
        assert await store.load(org, "never") == fresh  # nothing changed


async def test_updates_since_returns_the_log_tail_or_the_snapshot(
    store: PostgresStore, org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        assert (await store.updates_since(org, "d", 0)).last_update_id == 0
        ids = [(await append(store, org, "d", yupdate(c))).update_id for c in "abc"]
        tail = await store.updates_since(org, "d", ids[0])
        assert tail.snapshot is None
        assert tail.updates == [(ids[1], yupdate("b")), (ids[2], yupdate("c"))]
        assert tail.last_update_id == ids[2]
        assert (await store.updates_since(org, "d", ids[2])).updates == []

        await store.compact(org, "d", yupdate("state"))
        later = await append(store, org, "d", yupdate("d"))
        tail = await store.updates_since(org, "d", ids[0])  # its log is gone
        assert tail.snapshot is not None
        assert tail.updates == [(later.update_id, yupdate("d"))]
        assert tail.last_update_id == later.update_id
        tail = await store.updates_since(org, "d", ids[2])  # after the snapshot: log only
        assert tail.snapshot is None and tail.updates == [(later.update_id, yupdate("d"))]


async def test_frames_sids_records_and_idempotency_keys(
    store: PostgresStore, org: str, session_dsn: str
) -> None:
    other = "another-" + org
    with anyio.fail_after(TIMEOUT):
        empty = await store.read_frames(org, 0)
        assert (empty.frames, empty.oldest, empty.newest) == ([], 0, 0)
        p = {"title": "ünï \u0000 \U0001f600", "n": 1.5, "list": [1, None, {"z": 1, "a": 2}]}
        committed = await append(
            store,
            org,
            "issue/1",
            yupdate("1"),
            FrameBatch((draft("issue", "1", "i", p),), ("tx-1", {"ok": True, "note": "é"})),
        )
        assert [f.sid for f in committed.frames] == [1]
        logged = await store.log_frames(
            org, FrameBatch(tuple(draft("user", str(i), "i") for i in range(3)))
        )
        assert [f.sid for f in logged] == [2, 3, 4]
        assert [f.sid for f in await store.log_frames(other, FrameBatch((draft("x", "1"),)))] == [1]
        sid = await store.append_frame(
            org, t="user", id="0", op="u", p={"a": 1}, who=None, at=7, ctx={}
        )
        assert sid == 5

        page = await store.read_frames(org, 0)
        assert [f.sid for f in page.frames] == [1, 2, 3, 4, 5]
        assert (page.oldest, page.newest) == (0, 5)
        assert page.frames[0] == Frame(
            1, org, "issue", "1", "i", p, "alice", 1000, draft("a", "b").ctx
        )
        assert [f.sid for f in await store.frames_since(org, 2, limit=2)] == [3, 4]
        assert [f.sid for f in await store.frames_since(org, 0, t="issue")] == [1]
        assert await store.frame_bounds(org) == (0, 5)
        assert [f.sid for f in await store.record_frames(org, "user", "0", 0)] == [2, 5]

        # The JSON text is byte for byte what values.dumps makes (the same on every node).
        async with await psycopg.AsyncConnection.connect(session_dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT p, ctx FROM frames WHERE org = %s AND sid = 1", [org])
            assert await cur.fetchone() == (values.dumps(p, "p"), '{"client_tx_id":null}')

        record = await store.get_record(org, "issue", "1")
        assert record is not None
        assert (record.fields, record.sid, record.update_id) == (p, 1, committed.update_id)
        rows, newest = await store.list_records(org)
        assert [(r.t, r.id) for r in rows] == [("issue", "1"), ("user", "0"), ("user", "1"),
                                               ("user", "2")]  # fmt: skip
        assert newest == 5
        rows, _ = await store.list_records(org, t="user", after=("user", "0"), limit=1)
        assert [r.id for r in rows] == ["1"]

        assert await store.get_mutation(org, "tx-1") == {"ok": True, "note": "é", "sid": 1}
        assert await store.get_mutation(other, "tx-1") is None
        await store.put_mutation(org, "tx-2", {"ok": 1})
        await store.put_mutation(org, "tx-2", {"ok": 2})  # the first wins
        assert await store.get_mutation(org, "tx-2") == {"ok": 1}

        # A delete frame removes the record; the doc goes in the same transaction.
        gone = await store.log_frames(
            org, FrameBatch((draft("issue", "1", "d"),)), delete="issue/1"
        )
        assert [f.sid for f in gone] == [6]
        assert await store.get_record(org, "issue", "1") is None
        assert not await store.has_doc(org, "issue/1")

        assert await store.trim_frames(org, 2) == 4
        page = await store.read_frames(org, 0)
        assert [f.sid for f in page.frames] == [5, 6] and page.oldest == 4
        assert await store.trim_frames(org, 0) == 2
        assert await store.frame_bounds(org) == (0, 0)
        assert [f.sid for f in await store.log_frames(org, FrameBatch((draft("u", "9"),)))] == [7]


async def test_record_writers_and_stale_records(store: PostgresStore, org: str) -> None:
    with anyio.fail_after(TIMEOUT):
        await store.log_frames(org, FrameBatch((draft("task", "1", "i", {"a": 1, "b": 2}),)))
        await store.log_frames(
            org,
            FrameBatch((draft("task", "1", "u", {"a": 3}, who="bob", ctx={"client_id": "tab"}),)),
        )
        await store.log_frames(org, FrameBatch((draft("task", "1", "u", {"b": 4}, who="bob"),)))
        rows = await store.record_writers(
            org, "task", "1", 0, ["a", "b", "c"], exclude=("alice", None)
        )
        assert sorted(rows, key=str) == sorted([("a", "bob", 2), ("b", "bob", 3)], key=str)
        rows = await store.record_writers(org, "task", "1", 0, ["a", "b"], exclude=("bob", "tab"))
        assert sorted(rows, key=str) == sorted([("a", "alice", 1), ("b", "bob", 3)], key=str)
        await store.log_frames(org, FrameBatch((draft("task", "1", "d", who="carol"),)))
        rows = await store.record_writers(org, "task", "1", 3, ["a"], exclude=("alice", None))
        assert rows == [(None, "carol", 4)]

        fresh = await append(
            store, org, "issue/fresh", yupdate("f"), FrameBatch((draft("issue", "fresh", "i"),))
        )
        assert fresh.frames
        await append(store, org, "issue/never", yupdate("n"))
        await append(store, org, "plain", yupdate("p"))
        behind = await append(store, org, "issue/a/b", yupdate("b"))
        stale = sorted(s for s in await store.stale_records(limit=10_000) if s[0] == org)
        assert stale == [(org, "issue/a/b"), (org, "issue/never")]
        await store.log_frames(
            org, FrameBatch((draft("issue", "a/b", "i", update_id=behind.update_id),))
        )
        stale = sorted(s for s in await store.stale_records(limit=10_000) if s[0] == org)
        assert stale == [(org, "issue/never")]


async def test_drafts_are_settled_and_record_update_ids_never_go_back(
    store: PostgresStore, org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        first = await store.log_frames(org, FrameBatch((draft("r", "1", "i", update_id=10),)))
        assert len(first) == 1
        # The same state again (another node framing it): nothing new, no sid taken.
        assert await store.log_frames(org, FrameBatch((draft("r", "1", "i", update_id=10),))) == []
        # In one batch, the second of two drafts of one value is nothing new either.
        two = await store.log_frames(
            org,
            FrameBatch(
                (
                    draft("r", "1", "u", {"n": 1}, update_id=11),
                    draft("r", "1", "u", {"n": 1}, update_id=11),
                )
            ),
        )
        assert [(f.sid, f.p) for f in two] == [(2, {"n": 1})]
        # From an older view than the row's: stale. A node's own change (no
        # update_id) is logged; the row keeps 11.
        stale = draft("r", "1", "u", {"n": 3}, update_id=4)
        assert await store.log_frames(org, FrameBatch((stale,))) == []
        own = draft("r", "1", "u", {"n": 3}, update_id=None)
        assert len(await store.log_frames(org, FrameBatch((own,)))) == 1
        record = await store.get_record(org, "r", "1")
        assert record is not None and record.update_id == 11 and record.fields["n"] == 3


async def test_bad_values_are_refused_at_the_call_and_nothing_is_queued(
    store: PostgresStore, org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        refused = store.stats().refused_batches
        with pytest.raises(values.UnstorableValue, match="NUL"):
            await store.append(org, "a\x00b", yupdate("x"), actor="a", at=1)
        with pytest.raises(values.UnstorableValue):
            store.log_frames(org, FrameBatch((draft("t", "1", "i", {"x": float("nan")}),)))
        with pytest.raises(values.UnstorableValue, match="NUL"):
            store.log_frames(org, FrameBatch((draft("t", "1\x00", "i"),)))
        with pytest.raises(values.UnstorableValue):
            await store.load(org, "\ud800")
        assert store.stats().refused_batches == refused + 2
        assert store.stats().queued == 0
        await store.flush()  # nothing failed
        assert store.health() is None


async def test_close_commits_what_is_queued_and_appends_wait_for_room(
    session_dsn: str, org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        store = PostgresStore(session_dsn, max_queued_write_bytes=2000)
        await store.start()
        big = yupdate("x" * 500)
        appended = [await store.append(org, "d", big, actor="a", at=1) for _ in range(40)]
        assert store.stats().queued_bytes <= 2000 + len(big) + 1000  # producers were held back
        await store.close()
        assert all(a.durable.done() and a.durable.exception() is None for a in appended)
        assert store.health() == "store closed"
        with pytest.raises(StoreClosedError):
            await store.append(org, "d", big, actor="a", at=1)
        async with PostgresStore(session_dsn) as again:
            stored = await again.load(org, "d")
            assert stored is not None and len(stored.updates) == 40
            stats = again.stats()
            assert stats.commits == 0 and stats.failed_batches == 0


# -- several nodes -----------------------------------------------------------------------


async def test_two_nodes_appending_concurrently_share_one_order(
    nodes: tuple[PostgresStore, PostgresStore], org: str
) -> None:
    """Ids grow per doc in commit order, each names its predecessor (no fork, no gap),
    and each org's sids are 1..n with no gap, in commit order, whichever node wrote."""
    orgs = [org, org + "-b", org + "-c"]
    docs = ["x", "y", "z"]
    per_node = 300
    results: list[tuple[int, tuple[str, str], Committed]] = []  # (node, key, commit)

    async def node(index: int, store: PostgresStore, seed: int) -> None:
        rng = random.Random(seed)
        pending = []
        for i in range(per_node):
            key = (rng.choice(orgs), rng.choice(docs))
            frames = FrameBatch((draft("rec", f"{index}-{i}", "i"),))
            appended = await store.append(*key, yupdate(f"{index}-{i}"), actor="a", at=i,
                                          frames=frames)  # fmt: skip
            pending.append((key, appended.durable))
            if rng.random() < 0.2:
                await asyncio.sleep(0.001)  # let both writers run batches side by side
        for key, durable in pending:
            results.append((index, key, await durable))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for index, store in enumerate(nodes):
                tg.start_soon(node, index, store, index)

    # No deadlock (retried, but counted), no failure.
    assert all(s.stats().failed_batches == 0 and s.rolled_back == 0 for s in nodes)
    assert len(results) == 2 * per_node
    for key in {(o, d) for o in orgs for d in docs}:
        chain = sorted((c for _, k, c in results if k == key), key=lambda c: c.update_id)
        # One linear history per doc: every commit follows exactly the one before it.
        assert [c.prev_update_id for c in chain] == [0] + [c.update_id for c in chain[:-1]]
        # Both row locks are held to the commit: sid order is update id order.
        sids = [c.frames[0].sid for c in chain]
        assert sids == sorted(sids)
        for index in range(2):  # a node's own writes commit in its call order
            own = [c.update_id for i, k, c in results if i == index and k == key]
            assert own == sorted(own)
    for o in orgs:
        sids = sorted(c.frames[0].sid for _, k, c in results if k[0] == o)
        assert sids == list(range(1, len(sids) + 1))  # gap-free
        page = await nodes[1].read_frames(o, 0, limit=10_000)
        assert [f.sid for f in page.frames] == sids
        for index in range(2):
            own = [c.frames[0].sid for i, k, c in results if i == index and k[0] == o]
            assert own == sorted(own)
    stored = await nodes[0].load(org, "x")
    expected = [c.update_id for _, k, c in results if k == (org, "x")]
    assert stored is not None and len(stored.updates) == len(expected)
    assert stored.last_update_id == max(expected)


async def test_batches_naming_docs_and_orgs_in_opposite_orders_do_not_deadlock(
    nodes: tuple[PostgresStore, PostgresStore], org: str
) -> None:
    """Node 0 writes docs a, b, c, d (orgs 1, 2) in one batch while node 1 writes them
    in the reverse order: the transaction locks rows in one global order, never in
    queue order (which deadlocks, and PostgreSQL rolls one of the two back)."""
    orgs = (org, org + "-2")
    keys = [(orgs[i % 2], name) for i, name in enumerate("abcdefgh")]
    rounds = 150

    async def batch(store: PostgresStore, order: list[tuple[str, str]], tag: str) -> None:
        pending = []
        for key in order:
            frames = FrameBatch((draft("r", f"{tag}-{key[1]}", "i"),))
            appended = await store.append(*key, yupdate(tag), actor="a", at=1, frames=frames)
            pending.append(appended.durable)
        for durable in pending:
            await durable

    with anyio.fail_after(TIMEOUT):
        for round_ in range(rounds):
            await asyncio.gather(
                batch(nodes[0], keys, f"{round_}-0"), batch(nodes[1], keys[::-1], f"{round_}-1")
            )
    assert all(s.stats().failed_batches == 0 and s.rolled_back == 0 for s in nodes)
    for o in orgs:
        sids = [f.sid for f in await nodes[0].frames_since(o, 0, limit=10_000)]
        assert sids == list(range(1, rounds * 8 + 1))


async def test_two_nodes_compacting_one_doc_concurrently_lose_nothing(
    nodes: tuple[PostgresStore, PostgresStore], org: str
) -> None:
    """Each node compacts with its own replica, which lacks what the other wrote."""
    replicas = [Doc(), Doc()]
    keys: set[str] = set()

    async def change(index: int, key: str) -> None:
        doc = replicas[index]
        before = doc.get_state()
        doc.get("m", type=Map)[key] = key
        keys.add(key)
        await append(nodes[index], org, "shared", doc.get_update(before))

    with anyio.fail_after(TIMEOUT):
        for round_ in range(6):
            for index in range(2):
                for i in range(3):
                    await change(index, f"n{index}-r{round_}-{i}")
            async with anyio.create_task_group() as tg:  # both at once, different states
                for index in range(2):
                    tg.start_soon(nodes[index].compact, org, "shared", replicas[index].get_update())
            # One node appends, the other compacts alone with a state that lacks it.
            await change(round_ % 2, f"after-{round_}")
            other = 1 - round_ % 2
            await nodes[other].compact(org, "shared", replicas[other].get_update())
        stored = await nodes[0].load(org, "shared")
        assert stored is not None and stored.snapshot is not None
        assert set(doc_of(stored).get("m", type=Map).keys()) == keys
        assert stored.updates == []  # every log row was folded in


async def test_identical_drafts_from_two_nodes_are_framed_once(
    nodes: tuple[PostgresStore, PostgresStore], org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        for round_ in range(20):
            d = draft("issue", "1", "u", {"n": round_}, update_id=100 + round_)
            got = await asyncio.gather(*(s.log_frames(org, FrameBatch((d,))) for s in nodes))
            assert sorted(len(frames) for frames in got) == [0, 1]
        frames = await nodes[0].record_frames(org, "issue", "1", 0)
        assert [f.p["n"] for f in frames] == list(range(20))
        assert [f.sid for f in frames] == list(range(1, 21))


async def test_one_client_tx_id_from_two_nodes_is_applied_once(
    nodes: tuple[PostgresStore, PostgresStore], org: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        for round_ in range(10):
            tx = f"tx-{round_}"
            got = await asyncio.gather(
                *(
                    s.log_frames(
                        org,
                        FrameBatch(
                            (draft("issue", str(round_), "i", {"by": i}),),
                            (tx, {"by": i, "client_tx_id": tx}),
                        ),
                    )
                    for i, s in enumerate(nodes)
                ),
                return_exceptions=True,
            )
            applied = [g for g in got if isinstance(g, list)]
            replays = [g for g in got if isinstance(g, MutationReplayed)]
            assert len(applied) == 1 and len(replays) == 1, got
            stored = await nodes[0].get_mutation(org, tx)
            assert stored is not None and stored["sid"] == applied[0][0].sid
            assert replays[0].result == stored and replays[0].client_tx_id == tx
            assert len(await nodes[1].record_frames(org, "issue", str(round_), 0)) == 1

        # Riding on an append: the update is stored by both, the frames once.
        batch = [
            FrameBatch((draft("doc", "1", "u", {"by": i}),), ("tx-append", {"by": i}))
            for i in range(2)
        ]
        commits = await asyncio.gather(
            *(append(s, org, "doc/1", yupdate(str(i)), batch[i]) for i, s in enumerate(nodes))
        )
        framed = [c for c in commits if c.frames]
        replayed = [c for c in commits if c.replayed is not None]
        assert len(framed) == 1 and len(replayed) == 1
        assert replayed[0].frames == [] and replayed[0].replayed == await nodes[1].get_mutation(
            org, "tx-append"
        )
        stored_doc = await nodes[0].load(org, "doc/1")
        assert stored_doc is not None and len(stored_doc.updates) == 2
        assert len(await nodes[0].record_frames(org, "doc", "1", 0)) == 1


# -- migrations --------------------------------------------------------------------------


async def test_migrations_run_once_when_nodes_start_together_and_again() -> None:
    with throwaway_database("crdt_sync_test_migrate") as dsn:
        with anyio.fail_after(TIMEOUT):
            stores = [PostgresStore(dsn) for _ in range(4)]
            await asyncio.gather(*(s.start() for s in stores))
            try:
                assert all(s.health() is None for s in stores)
                await append(stores[0], "o", "d", yupdate("a"))
                assert await stores[3].has_doc("o", "d")
            finally:
                for s in stores:
                    await s.close()
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                assert await migrate(conn) == (SCHEMA_VERSION, SCHEMA_VERSION)
                assert await migrate(conn) == (SCHEMA_VERSION, SCHEMA_VERSION)
                cur = await conn.execute("SELECT version FROM schema_version")
                assert await cur.fetchall() == [(SCHEMA_VERSION,)]
            async with PostgresStore(dsn) as again:  # a restart keeps the data
                assert await again.has_doc("o", "d")


async def test_a_version_3_outbox_learns_its_record_ids() -> None:
    # Frames waiting in the outbox of a database from before the per-record throttle.
    with throwaway_database("crdt_sync_test_v3") as dsn:
        with anyio.fail_after(TIMEOUT):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                async with conn.transaction():
                    for statement in [s for step in MIGRATIONS[:3] for s in step]:
                        await conn.execute(statement)  # type: ignore[arg-type]
                    await conn.execute("CREATE TABLE schema_version (version int NOT NULL)")
                    await conn.execute("INSERT INTO schema_version (version) VALUES (3)")
                    await conn.execute(
                        "INSERT INTO webhook_outbox (org, sid, t, frame, created_at)"
                        " VALUES ('o', 5, 'card', %s, 1)",
                        [outbox.frame_json("a", "i", "{}", None, 1, "{}")],
                    )
            claim = {"lease_ms": 60_000, "max_batch": 10, "throttle_ms": 60_000}
            async with PostgresStore(dsn, outbox=True) as store:
                d = await store.claim_delivery(EndpointSpec("wh"), owner="n", **claim)
                assert d is not None and [(f.sid, f.id) for f in d.frames] == [(5, "a")]
                await store.finish_delivery(d.id, owner="n", outcome="ok", endpoints=["wh"])
                # The same record again, within the window: it waits.
                await store.log_frames("o", FrameBatch((frame_draft("card", "a", "u", {"n": 1},
                                       who="w", at=2),)))  # fmt: skip
                assert await store.claim_delivery(EndpointSpec("wh"), owner="n", **claim) is None
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute("SELECT t, rid FROM webhook_outbox")
                assert await cur.fetchall() == [("card", "a")]  # the new frame's row
                cur = await conn.execute("SELECT version FROM schema_version")
                assert await cur.fetchall() == [(SCHEMA_VERSION,)]


async def test_a_foreign_or_newer_schema_is_refused() -> None:
    with throwaway_database("crdt_sync_test_foreign") as dsn:
        with anyio.fail_after(TIMEOUT):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE documents (id int)")
            with pytest.raises(StoreError, match="not a crdt-sync database"):
                await PostgresStore(dsn).start()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DROP TABLE documents")
            async with PostgresStore(dsn):
                pass
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("UPDATE schema_version SET version = version + 1")
            with pytest.raises(StoreError, match="newer"):
                await PostgresStore(dsn).start()


# -- outages -----------------------------------------------------------------------------


def _terminate(dbname: str) -> int:
    with admin_connection() as conn:
        cur = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0


def _allow_connections(dbname: str, allow: bool) -> None:
    with admin_connection() as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {str(allow).lower()}')


async def _until_probe_passes(store: PostgresStore, seconds: float = 30) -> None:
    with anyio.fail_after(seconds):
        while True:
            try:
                await store.probe()
                return
            except StoreUnavailableError:
                await anyio.sleep(0.2)


async def test_terminated_connections_are_replaced_without_failing_a_write() -> None:
    with throwaway_database("crdt_sync_test_terminate") as dsn:
        dbname = dsn.rsplit("/", 1)[1]
        with anyio.fail_after(TIMEOUT):
            async with PostgresStore(dsn, min_size=2, max_size=4) as store:
                first = await append(store, "o", "d", yupdate("a"))
                assert _terminate(dbname) >= 1
                second = await append(store, "o", "d", yupdate("b"))  # a fresh connection
                assert second.prev_update_id == first.update_id
                assert await store.load("o", "d") is not None
                assert store.stats().failed_batches == 0 and store.health() is None


async def test_server_gone_fails_writes_as_unavailable_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with throwaway_database("crdt_sync_test_outage") as dsn:
        dbname = dsn.rsplit("/", 1)[1]
        with anyio.fail_after(TIMEOUT):
            async with PostgresStore(dsn, acquire_timeout=1, connect_timeout=1) as store:
                first = await append(store, "o", "d", yupdate("a"))
                _allow_connections(dbname, False)
                _terminate(dbname)
                caplog.clear()
                with caplog.at_level(logging.ERROR, logger="persistence.postgres"):
                    for _ in range(3):
                        with pytest.raises(StoreUnavailableError):
                            await append(store, "o", "d", yupdate("lost"))
                    with pytest.raises(StoreUnavailableError):
                        await store.probe()
                    with pytest.raises(StoreUnavailableError):
                        await store.flush()  # a write (the appends) failed
                    errors_logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
                    assert len(errors_logged) == 1  # once per outage
                health = store.health()
                assert health is not None and "unavailable" in health
                with pytest.raises(ReadUnavailableError) as read_failed:
                    await store.load("o", "d")
                assert isinstance(read_failed.value, StoreReadError)
                assert isinstance(read_failed.value, StoreUnavailableError)
                assert store.stats().failed_batches >= 4

                _allow_connections(dbname, True)
                await _until_probe_passes(store)
                assert store.health() is None
                again = await append(store, "o", "d", yupdate("b"))
                assert again.prev_update_id == first.update_id  # nothing failed is stored
                stored = await store.load("o", "d")
                assert stored is not None and stored.updates == [yupdate("a"), yupdate("b")]


async def test_network_gone_fails_writes_and_reads_then_recovers() -> None:
    with throwaway_database("crdt_sync_test_proxy") as dsn:
        dbname = dsn.rsplit("/", 1)[1]
        proxy = TcpRelay()
        await proxy.start()
        via_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}"
        with anyio.fail_after(TIMEOUT):
            store = PostgresStore(via_proxy, acquire_timeout=1, connect_timeout=1)
            await store.start()
            try:
                assert store.where == f"postgresql://127.0.0.1:{proxy.port}/{dbname}"
                first = await append(store, "o", "d", yupdate("a"))
                await proxy.stop()
                with pytest.raises(StoreUnavailableError):
                    await append(store, "o", "d", yupdate("lost"))
                assert "unavailable" in (store.health() or "")
                with pytest.raises(ReadUnavailableError):
                    await store.has_doc("o", "d")
                await proxy.start()  # the same port again
                await _until_probe_passes(store)
                assert store.health() is None
                again = await append(store, "o", "d", yupdate("b"))
                assert again.prev_update_id == first.update_id
                with pytest.raises(StoreUnavailableError, match="queued before this flush"):
                    await store.flush()  # the lost append is reported once
                await store.flush()
            finally:
                await store.close()
                await proxy.stop()


async def test_a_closed_port_fails_start_as_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when we use it
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=2)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            await store.start()
    assert store.health() == "store closed"
    with pytest.raises(StoreClosedError):
        await store.load("o", "d")
    await store.close()  # closing a store that never opened is fine
