"""Tenant isolation in the store (issue 11, item 5).

Each org's frames are numbered 1, 2, 3, ... on their own (a client's sids say nothing
about what other tenants write), never reused, and no store method returns or
changes another org's rows: two orgs using the same doc names, record ids and
``client_tx_id`` values are two independent tenants.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from pycrdt import merge_updates
from sqlite_utils import Database

from persistence import SQLiteStore, StoreWriteError
from persistence.sqlite.schema import MIGRATIONS
from persistence.store import Frame, FrameBatch
from tests.unit.test_store_frames import draft, refuse_frames_of_type_boom, yupdate

pytestmark = pytest.mark.anyio

TIMEOUT = 10
A, B = "acme", "globex"


def sids(frames: list[Frame]) -> list[int]:
    return [f.sid for f in frames]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db", commit_interval_ms=0) as s:
        yield s


@dataclass
class Tenant:
    """What :func:`two_tenants` wrote for one org."""

    org: str
    sids: list[int] = field(default_factory=list)
    update_ids: list[int] = field(default_factory=list)


async def two_tenants(store: SQLiteStore) -> dict[str, Tenant]:
    """Write the same doc names, record ids and client_tx_ids in orgs A and B,
    interleaved, each with content naming its org; B writes more than A."""
    tenants = {A: Tenant(A), B: Tenant(B)}
    for round_ in range(3):
        for org in (A, B) if round_ % 2 == 0 else (B, A):
            tenant = tenants[org]
            title = f"{org} {round_}"
            op = "i" if round_ == 0 else "u"
            frames = FrameBatch(
                (draft("issue", "1", op, {"title": title}, who=f"{org}-alice"),),
                mutation=(f"tx-{round_}", {"ok": True, "org": org}),
            )
            appended = await store.append(
                org, "issue/1", yupdate(title), actor=f"{org}-alice", at=round_, frames=frames
            )
            committed = await appended.durable
            tenant.sids += sids(committed.frames)
            tenant.update_ids.append(committed.update_id)
            plain = await store.append(org, "notes", yupdate(title), actor="x", at=round_)
            await plain.durable
            if org == B:  # B is busier: A's sids must not show it
                tenant.sids += sids(
                    await store.log_frames(
                        org, FrameBatch((draft("issue", "2", "i" if round_ == 0 else "u"),))
                    )
                )
                tenant.sids.append(
                    await store.append_frame(
                        org, t="user", id="1", op="u", p={"n": round_}, who="b", at=1, ctx={}
                    )
                )
    return tenants


# -- per-org sid sequences ---------------------------------------------------------------


async def test_each_org_numbers_its_frames_one_two_three(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        assert tenants[A].sids == [1, 2, 3]
        assert tenants[B].sids == list(range(1, 10))
        for org, tenant in tenants.items():
            page = await store.read_frames(org, 0)
            assert [f.sid for f in page.frames] == tenant.sids
            assert {f.org for f in page.frames} == {org}
            assert (page.oldest, page.newest) == (0, tenant.sids[-1])
            assert await store.frame_bounds(org) == (0, tenant.sids[-1])
            assert (await store.list_records(org))[1] == tenant.sids[-1]


async def test_frames_of_one_org_queued_together_get_consecutive_sids(
    store: SQLiteStore,
) -> None:
    """One transaction holding several orgs' batches: each org's sids follow on."""
    with anyio.fail_after(TIMEOUT):
        waits = [
            store.log_frames(org, FrameBatch((draft("t", str(i), "i"), draft("t", str(i)))))
            for i, org in enumerate([A, B, A, A, B])
        ]
        results = [sids(await w) for w in waits]
        assert results == [[1, 2], [1, 2], [3, 4], [5, 6], [3, 4]]


async def test_sids_are_never_reused_after_trims_deletes_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            await two_tenants(store)
            assert await store.trim_frames(A, 0) == 3  # every frame of A is gone
            assert await store.frame_bounds(A) == (0, 0)
            deleted = await store.log_frames(
                A, FrameBatch((draft("issue", "1", "d"),)), delete="issue/1"
            )
            assert sids(deleted) == [4]
            assert await store.trim_frames(A, 0) == 1
        async with SQLiteStore(path) as store:
            assert sids(await store.log_frames(A, FrameBatch((draft("issue", "1", "i"),)))) == [5]
            assert sids(await store.log_frames(B, FrameBatch((draft("issue", "1", "u"),)))) == [10]


async def test_a_rolled_back_batch_leaves_the_sequence_as_it_was(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await refuse_frames_of_type_boom(store)
        assert sids(await store.log_frames(A, FrameBatch((draft("ok", "1", "i"),)))) == [1]
        with pytest.raises(StoreWriteError, match="boom"):
            await store.log_frames(A, FrameBatch((draft("ok", "2", "i"), draft("boom", "1", "i"))))
        # Nobody saw sids 2 and 3: the next frame is 2, and A's log has no gap.
        assert sids(await store.log_frames(A, FrameBatch((draft("ok", "3", "i"),)))) == [2]
        assert [f.sid for f in await store.frames_since(A, 0)] == [1, 2]


async def test_two_stores_on_one_file_continue_each_orgs_sequence(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as one, SQLiteStore(path) as two:
            assert sids(await one.log_frames(A, FrameBatch((draft("t", "1", "i"),)))) == [1]
            assert sids(await two.log_frames(A, FrameBatch((draft("t", "2", "i"),)))) == [2]
            assert sids(await two.log_frames(B, FrameBatch((draft("t", "1", "i"),)))) == [1]
            assert sids(await one.log_frames(A, FrameBatch((draft("t", "3", "i"),)))) == [3]
            assert [f.sid for f in await two.frames_since(A, 0)] == [1, 2, 3]


# -- no method crosses orgs (one test per store method) ----------------------------------


async def test_list_docs_lists_only_the_orgs_docs(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await two_tenants(store)
        await (await store.append(B, "issue/only-b", yupdate("b"), actor="b", at=1)).durable
        docs, _ = await store.list_docs(A)
        assert [d.name for d in docs] == ["issue/1", "notes"]
        assert all(d.update_count == 3 for d in docs)  # not B's rows counted in
        page, cursor = await store.list_docs(A, limit=1)
        assert [d.name for d in page] == ["issue/1"] and cursor is not None
        rest, _ = await store.list_docs(A, cursor=cursor)
        assert [d.name for d in rest] == ["notes"]
        docs, _ = await store.list_docs(B, prefix="issue/")
        assert [d.name for d in docs] == ["issue/1", "issue/only-b"]
        assert (await store.list_docs("nobody"))[0] == []


async def test_load_and_has_doc_read_only_the_orgs_doc(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await two_tenants(store)
        for org in (A, B):
            stored = await store.load(org, "issue/1")
            assert stored is not None
            assert stored.updates == [yupdate(f"{org} {r}") for r in range(3)]
            assert await store.has_doc(org, "issue/1")
        await (await store.append(B, "issue/only-b", yupdate("b"), actor="b", at=1)).durable
        assert await store.load(A, "issue/only-b") is None
        assert not await store.has_doc(A, "issue/only-b")


async def test_delete_deletes_only_the_orgs_doc(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await two_tenants(store)
        assert await store.delete(A, "issue/1")
        assert await store.load(A, "issue/1") is None
        stored = await store.load(B, "issue/1")
        assert stored is not None and len(stored.updates) == 3
        assert not await store.delete(A, "issue/1")
        # A record delete riding on a frame batch, too.
        await store.log_frames(A, FrameBatch((draft("issue", "1", "d"),)), delete="notes")
        assert await store.has_doc(B, "notes") and not await store.has_doc(A, "notes")
        assert await store.get_record(B, "issue", "1") is not None


async def test_compact_compacts_only_the_orgs_doc(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        before = await store.load(A, "issue/1")
        assert before is not None
        # B's log of the same doc name is newer: A's compaction must not touch it.
        assert tenants[B].update_ids[-1] > tenants[A].update_ids[-1]
        await store.compact(A, "issue/1", yupdate("acme state"))
        a = await store.load(A, "issue/1")
        assert a is not None and a.updates == []
        # A's log rows, merged into A's snapshot: nothing of B's.
        assert a.snapshot == merge_updates(yupdate("acme state"), *before.updates)
        b = await store.load(B, "issue/1")
        assert b is not None and b.snapshot is None and len(b.updates) == 3


async def test_get_record_reads_only_the_orgs_record(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        for org in (A, B):
            record = await store.get_record(org, "issue", "1")
            assert record is not None
            assert record.fields == {"title": f"{org} 2"}
            assert record.sid == (await store.record_frames(org, "issue", "1", 0))[-1].sid
            assert record.update_id == tenants[org].update_ids[-1]
        assert await store.get_record(A, "issue", "2") is None  # only B has it


async def test_list_records_lists_only_the_orgs_records(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        rows, newest = await store.list_records(A)
        assert [(r.t, r.id, r.fields) for r in rows] == [("issue", "1", {"title": "acme 2"})]
        assert newest == tenants[A].sids[-1] == 3  # A's newest sid, not B's 9
        rows, newest = await store.list_records(B, t="issue")
        assert [r.id for r in rows] == ["1", "2"] and newest == 9
        rows, _ = await store.list_records(A, after=("issue", "1"))
        assert rows == []


async def test_idempotency_keys_are_per_org(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        for org in (A, B):
            for round_ in range(3):
                result = await store.get_mutation(org, f"tx-{round_}")
                assert result is not None and result["org"] == org
            # Each key remembers its org's sid of the frame it produced.
            assert (await store.get_mutation(org, "tx-0"))["sid"] == tenants[org].sids[0]  # type: ignore[index]
        # A replay in A (first result wins) leaves B's key alone, and the reverse.
        await store.put_mutation(A, "tx-0", {"ok": False})
        await store.put_mutation(B, "only-b", {"ok": "b"})
        assert (await store.get_mutation(A, "tx-0"))["org"] == A  # type: ignore[index]
        assert (await store.get_mutation(B, "tx-0"))["org"] == B  # type: ignore[index]
        assert await store.get_mutation(A, "only-b") is None


async def test_frame_reads_return_only_the_orgs_frames(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        for org in (A, B):
            for frames in (
                await store.frames_since(org, 0),
                (await store.read_frames(org, 0)).frames,
                await store.record_frames(org, "issue", "1", 0),
                await store.frames_since(org, 0, t="issue"),
            ):
                assert frames and {f.org for f in frames} == {org}
            titles = [f.p["title"] for f in await store.record_frames(org, "issue", "1", 0)]
            assert titles == [f"{org} {r}" for r in range(3)]
        assert await store.record_frames(A, "issue", "2", 0) == []
        # A's since is a position in A's log: B's larger sids do not hide A's frames.
        page = await store.read_frames(A, 1, limit=1)
        assert [f.sid for f in page.frames] == [2] and page.newest == tenants[A].sids[-1]


async def test_record_writers_sees_only_the_orgs_writers(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await two_tenants(store)
        for org in (A, B):
            rows = await store.record_writers(
                org, "issue", "1", 0, ["title"], exclude=("nobody", None)
            )
            newest = (await store.record_frames(org, "issue", "1", 0))[-1].sid
            assert rows == [("title", f"{org}-alice", newest)]
            # Excluding the org's own writer leaves nothing, whatever the other org wrote.
            mine = await store.record_writers(
                org, "issue", "1", 0, ["title"], exclude=(f"{org}-alice", None)
            )
            assert mine == []


async def test_trim_frames_trims_only_the_orgs_log(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        tenants = await two_tenants(store)
        assert await store.trim_frames(B, 1) == 8
        assert await store.frame_bounds(B) == (8, 9)
        assert [f.sid for f in await store.frames_since(A, 0)] == tenants[A].sids
        assert await store.trim_frames(A, 5) == 0  # A has 3: B's frames are not counted
        assert await store.frame_bounds(A) == (0, 3)


async def test_stale_records_name_their_org(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await two_tenants(store)
        assert await store.stale_records() == []
        await (await store.append(B, "issue/1", yupdate("unframed"), actor="b", at=9)).durable
        assert await store.stale_records() == [(B, "issue/1")]


# -- migration from schema version 2 (one sid sequence for every org) --------------------


def make_v2_database(path: Path, a: str = A, b: str = B, c: str = "c") -> dict[str, list[int]]:
    """A database as crdt-sync wrote it before per-org sids: the released migrations
    1 and 2, frames numbered by one AUTOINCREMENT sequence across orgs ``a``, ``b``
    and ``c`` (the base code's INSERT, records upsert, idempotency key and trim
    statements).

    Returns each org's retained sids.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        db = Database(conn)
        db.execute("BEGIN IMMEDIATE")
        MIGRATIONS[0](db)
        MIGRATIONS[1](db)
        db.create_table("schema_version", {"version": int}, not_null=["version"])
        db.execute("INSERT INTO schema_version (version) VALUES (2)")
        # Interleaved: global sids 1..8; c's frame is later trimmed away entirely.
        writes = [(a, "1", "i"), (b, "1", "i"), (a, "1", "u"), (b, "2", "i")]
        writes += [(b, "1", "u"), (c, "1", "i"), (a, "2", "i"), (b, "1", "u")]
        for org, id_, op in writes:
            p = json.dumps({"title": f"{org} {id_} {op}"})
            cur = conn.execute(
                "INSERT INTO frames (org, t, id, op, p, who, at, ctx) "
                "VALUES (?, 'issue', ?, ?, ?, ?, 1, ?)",
                (org, id_, op, p, f"{org}-alice", json.dumps({"client_tx_id": f"tx-{id_}"})),
            )
            sid = cur.lastrowid
            conn.execute(
                "INSERT INTO records (org, t, id, fields, sid, update_id, updated_at) "
                "VALUES (?, 'issue', ?, ?, ?, 0, 1) ON CONFLICT (org, t, id) DO UPDATE SET "
                "fields = excluded.fields, sid = excluded.sid",
                (org, id_, p, sid),
            )
            conn.execute(
                "INSERT INTO mutations (org, client_tx_id, result, at, sid) "
                "VALUES (?, ?, ?, 1, ?) ON CONFLICT (org, client_tx_id) DO NOTHING",
                (org, f"tx-{id_}", json.dumps({"org": org}), sid),
            )
        trim = (
            "DELETE FROM frames WHERE org = ? AND sid <= "
            "(SELECT sid FROM frames WHERE org = ? ORDER BY sid DESC LIMIT 1 OFFSET ?)"
        )
        conn.execute(trim, (a, a, 2))  # a keeps 3 and 7
        conn.execute(trim, (c, c, 0))  # c keeps nothing; its record still has sid 6
        db.execute("COMMIT")
    finally:
        conn.close()
    return {a: [3, 7], b: [2, 4, 5, 8], c: []}


async def test_version_2_frames_keep_their_sids_and_each_org_continues_after_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    old = make_v2_database(path)
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            for org, retained in old.items():
                page = await store.read_frames(org, 0)
                assert [f.sid for f in page.frames] == retained
                assert all(f.p["title"].startswith(f"{org} ") for f in page.frames)
                assert all(f.who == f"{org}-alice" for f in page.frames)
            assert (await store.read_frames(A, 0)).oldest == 2
            record = await store.get_record(B, "issue", "1")
            assert record is not None and record.sid == 8
            assert await store.get_mutation("c", "tx-1") == {"org": "c", "sid": 6}

            # New frames continue after the newest sid each org had: A after 7, B
            # after 8, C after its record's 6 (its frames were all trimmed).
            assert sids(await store.log_frames(A, FrameBatch((draft("issue", "1", "u"),)))) == [8]
            assert sids(await store.log_frames(B, FrameBatch((draft("issue", "1", "u"),)))) == [9]
            assert sids(await store.log_frames("c", FrameBatch((draft("issue", "1", "u"),)))) == [7]
            assert sids(await store.log_frames(A, FrameBatch((draft("issue", "3", "i"),)))) == [9]
            assert sids(await store.log_frames("new", FrameBatch((draft("issue", "1", "i"),)))) == [
                1
            ]

            # Catch-up over the boundary, as the delta endpoint pages (limit 1): every
            # frame once, in order, from the old sids straight into the new ones.
            for org, since, expected in ((A, 2, [3, 7, 8, 9]), (A, 7, [8, 9]), (B, 5, [8, 9])):
                got: list[int] = []
                for _ in range(10):
                    page = await store.read_frames(org, since, limit=1)
                    assert page.oldest <= since <= page.newest
                    got += [f.sid for f in page.frames]
                    since = page.frames[-1].sid if page.frames else page.newest
                    if not page.frames:
                        break
                assert got == expected
            # base_sid conflict checks across the boundary.
            writers = await store.record_writers(A, "issue", "1", 3, ["title"], exclude=("x", None))
            assert writers == [("title", "alice", 8)]
        async with SQLiteStore(path) as store:  # reopened: no second migration
            assert sids(await store.log_frames(A, FrameBatch((draft("issue", "1", "u"),)))) == [10]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
        assert dict(conn.execute("SELECT org, last_sid FROM frame_seq")) == {
            A: 10,
            B: 9,
            "c": 7,
            "new": 1,
        }
        # Every query by (org, sid) is answered from an index on the migrated file.
        for sql, args in (
            ("SELECT * FROM frames WHERE org = ? AND sid > ? ORDER BY sid LIMIT 9", (A, 0)),
            ("SELECT * FROM frames WHERE org = ? AND t = ? AND sid > ? ORDER BY sid", (A, "t", 0)),
            ("SELECT min(sid), max(sid) FROM frames WHERE org = ?", (A,)),
            ("SELECT last_sid FROM frame_seq WHERE org = ?", (A,)),
            (
                "DELETE FROM frames WHERE org = ? AND sid <= "
                "(SELECT sid FROM frames WHERE org = ? ORDER BY sid DESC LIMIT 1 OFFSET ?)",
                (A, A, 1),
            ),
        ):
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
            assert not any(step.startswith("SCAN") for step in plan), (sql, plan)
            assert any("USING" in step for step in plan), (sql, plan)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
                "VALUES (?, 8, 't', '1', 'i', '{}', NULL, 1, '{}')",
                (A,),
            )
    finally:
        conn.close()
