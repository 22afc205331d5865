"""SQLiteStore against real SQLite files: durability, group commit, compaction, failures."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from persistence import (
    SQLiteStore,
    Store,
    StoreClosedError,
    StoreError,
    StoreReadError,
    StoreWriteError,
)
from persistence.sqlite.schema import SCHEMA_VERSION
from persistence.store import Appended
from rooms.codec import decode_state_vector

pytestmark = pytest.mark.anyio

TIMEOUT = 10  # seconds; every test body runs under anyio.fail_after(TIMEOUT)
ORG = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db") as s:
        yield s


def rebuild(stored: Any) -> Doc:
    """A fresh pycrdt Doc from a StoredDoc: snapshot first, then the logged updates."""
    doc = Doc()
    if stored.snapshot is not None:
        doc.apply_update(stored.snapshot)
    for update in stored.updates:
        doc.apply_update(update)
    return doc


def content(doc: Doc) -> tuple[str, dict[str, Any]]:
    return str(doc.get("body", type=Text)), doc.get("fields", type=Map).to_py()


def yupdate(text: str, *, doc: Doc | None = None) -> bytes:
    """A real Yjs update inserting ``text`` (on ``doc``, or on a doc of its own)."""
    doc = Doc() if doc is None else doc
    before = doc.get_state()
    body = doc.get("body", type=Text)
    body.insert(len(body), text)
    return doc.get_update(before)


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, to tamper with the file behind the store's back."""
    return sqlite3.connect(path, isolation_level=None, timeout=5)


# -- round trips -----------------------------------------------------------------------


async def test_store_implements_protocol(store: SQLiteStore) -> None:
    assert isinstance(store, Store)


async def test_append_load_roundtrip_with_pycrdt(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        doc = Doc()
        body, fields = doc.get("body", type=Text), doc.get("fields", type=Map)
        updates: list[bytes] = []
        sub = doc.observe(lambda event: updates.append(event.update))
        body.insert(0, "héllo wörld 😀")
        fields["title"] = "Ünïcode"
        with doc.transaction():
            del body[0:1]
            body.insert(0, "H")
            fields["n"] = 3
        doc.unobserve(sub)
        last = None
        for update in updates:
            last = await store.append(ORG, "issue/1", update, actor="alice", at=1000)
        assert last is not None
        committed = await last.durable

        stored = await store.load(ORG, "issue/1")
        assert stored is not None
        assert stored.snapshot is None
        assert stored.updates == updates
        assert stored.last_update_id == committed.update_id
        loaded = rebuild(stored)
        assert content(loaded) == content(doc) == ("Héllo wörld 😀", {"title": "Ünïcode", "n": 3})
        assert decode_state_vector(loaded.get_state()) == decode_state_vector(doc.get_state())
        assert await store.load(ORG, "issue/2") is None
        assert await store.load("other-org", "issue/1") is None


async def test_close_makes_queued_appends_durable_and_reopen_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as s:
            appended = [await s.append(ORG, "d", b"u%d" % i, actor="a", at=i) for i in range(5)]
            # Not awaited: close() must commit them.
        ids = [a.durable.result().update_id for a in appended]
        assert ids == sorted(ids) and len(set(ids)) == 5
        async with SQLiteStore(path) as s:
            stored = await s.load(ORG, "d")
            assert stored is not None
            assert stored.updates == [b"u%d" % i for i in range(5)]
            assert stored.last_update_id == ids[-1]
            nxt = await (await s.append(ORG, "d", b"u5", actor="a", at=5)).durable
            assert (nxt.update_id, nxt.prev_update_id) == (ids[-1] + 1, ids[-1])


async def test_ids_strictly_increase_and_are_never_reused_after_delete(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as s:
            first = [
                (await (await s.append(ORG, "x", b"a", actor="a", at=1)).durable).update_id
                for _ in range(3)
            ]
            assert first[0] < first[1] < first[2]
            assert await s.delete(ORG, "x") is True
            assert await s.delete(ORG, "x") is False
            assert await s.load(ORG, "x") is None
            after_delete = await (await s.append(ORG, "x", b"b", actor="a", at=2)).durable
            assert after_delete.update_id > first[-1]
            # A new doc of that name: its history starts again.
            assert after_delete.prev_update_id == 0
            assert await s.delete(ORG, "x") is True
        # The newest ids were deleted; a restart must still not hand them out again.
        async with SQLiteStore(path) as s:
            again = await (await s.append(ORG, "y", b"c", actor="a", at=3)).durable
            assert again.update_id > after_delete.update_id


async def test_delete_removes_snapshot_and_log_only_of_that_doc(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        doc = Doc()
        await store.append(ORG, "a", yupdate("1", doc=doc), actor="x", at=1)
        await store.append(ORG, "b", b"2", actor="x", at=1)
        await store.compact(ORG, "a", doc.get_update())
        await store.append(ORG, "a", b"3", actor="x", at=2)
        assert await store.delete(ORG, "a") is True
        assert await store.load(ORG, "a") is None
        docs, _ = await store.list_docs(ORG)
        assert [d.name for d in docs] == ["b"]
        b = await store.load(ORG, "b")
        assert b is not None and b.updates == [b"2"]


# -- group commit ----------------------------------------------------------------------


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    n = 1000
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path, commit_interval_ms=5) as s:
            before = s.stats().commits
            ids: list[int] = []

            async def one(i: int) -> None:
                appended = await s.append(ORG, f"doc/{i % 10}", b"%d" % i, actor="a", at=i)
                ids.append((await appended.durable).update_id)

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
            stats = s.stats()
            commits = stats.commits - before
            assert 1 <= commits < 100, commits
            assert stats.last_batch_size >= 1 and stats.last_commit_seconds > 0
            # The histograms count every commit and every write.
            assert stats.commit_ops_sum == n and stats.commit_ops_buckets[-1] == stats.commits
            assert stats.commit_seconds_sum > 0
            assert len(set(ids)) == n
            total = 0
            for k in range(10):
                stored = await s.load(ORG, f"doc/{k}")
                assert stored is not None
                total += len(stored.updates)
            assert total == n
        async with SQLiteStore(path) as s:  # and they are on disk
            docs, _ = await s.list_docs(ORG)
            assert sum(d.update_count for d in docs) == n


async def test_without_group_commit_every_update_is_its_own_commit(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "s.db", commit_interval_ms=0, max_batch=1) as s:
            for i in range(20):
                await (await s.append(ORG, "d", b"%d" % i, actor="a", at=i)).durable
            stats = s.stats()
            assert stats.commits == 20
            assert stats.last_batch_size == 1
            assert stats.commit_ops_buckets[0] == 20  # all 20 in the "<= 1 write" bucket


# -- compaction ------------------------------------------------------------------------


async def test_compact_is_queued_behind_unawaited_appends(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        doc = Doc()
        appended = [
            await store.append(ORG, "d", yupdate(f"u{i}", doc=doc), actor="a", at=i)
            for i in range(3)
        ]
        # No id is passed: the compaction drops exactly the rows appended before it.
        await store.compact(ORG, "d", doc.get_update())
        newest = appended[-1].durable.result()  # committed before the compaction
        stored = await store.load(ORG, "d")
        assert stored is not None and stored.snapshot is not None
        assert stored.updates == []
        assert content(rebuild(stored)) == content(doc) == ("u0u1u2", {})
        assert stored.last_update_id == newest.update_id
        update = yupdate("u3", doc=doc)
        later = await (await store.append(ORG, "d", update, actor="a", at=3)).durable
        assert later.prev_update_id == newest.update_id  # the chain survives compaction
        stored = await store.load(ORG, "d")
        assert stored is not None and stored.snapshot is not None
        assert stored.updates == [update]
        assert stored.last_update_id == later.update_id
        docs, _ = await store.list_docs(ORG)
        assert (docs[0].size, docs[0].update_count) == (len(stored.snapshot) + len(update), 1)


# Text edits stay ASCII: pycrdt 0.14 measures Text length/indexes in UTF-8 bytes
# (len(Text("aé")) == 3), which is not what this test is about. Map values are not.
_ascii = st.text(alphabet="abc xyz", min_size=1, max_size=4)
_text = st.text(alphabet="abc xyzé€😀", min_size=1, max_size=4)
_op = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 50), _ascii),
    st.tuples(st.just("delete"), st.integers(0, 50), st.integers(1, 4)),
    st.tuples(
        st.just("set"),
        st.sampled_from(["a", "b", "c"]),
        st.one_of(st.integers(-100, 100), _text, st.booleans(), st.none()),
    ),
)


def _run(doc: Doc, ops: list[tuple[Any, ...]]) -> None:
    body, fields = doc.get("body", type=Text), doc.get("fields", type=Map)
    with doc.transaction():
        for op in ops:
            if op[0] == "insert":
                body.insert(op[1] % (len(body) + 1), op[2])
            elif op[0] == "delete" and len(body):
                start = op[1] % len(body)
                del body[start : min(len(body), start + op[2])]
            elif op[0] == "set":
                fields[op[1]] = op[2]


@settings(max_examples=30, deadline=None)
@given(
    transactions=st.lists(st.lists(_op, min_size=1, max_size=3), min_size=1, max_size=25),
    data=st.data(),
)
async def test_compaction_keeps_content_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    transactions: list[list[tuple[Any, ...]]],
    data: st.DataObject,
) -> None:
    compact_after = data.draw(st.integers(0, len(transactions)), label="compact_after")
    path = tmp_path_factory.mktemp("compaction") / "s.db"  # a new file per example
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path, commit_interval_ms=1) as s:
            doc = Doc()
            pending: list[bytes] = []
            sub = doc.observe(lambda event: pending.append(event.update))
            last: Appended | None = None
            for i, ops in enumerate(transactions):
                if i == compact_after:
                    await s.compact(ORG, "rec/1", doc.get_update())
                _run(doc, ops)
                for update in pending:
                    last = await s.append(ORG, "rec/1", update, actor="h", at=i)
                pending.clear()
            if compact_after == len(transactions):
                await s.compact(ORG, "rec/1", doc.get_update())
            doc.unobserve(sub)
            await s.flush()
            last_id = last.durable.result().update_id if last is not None else 0
        async with SQLiteStore(path) as s:
            stored = await s.load(ORG, "rec/1")
        assert stored is not None
        assert stored.snapshot is not None
        assert stored.last_update_id == last_id
        loaded = rebuild(stored)
        assert content(loaded) == content(doc)
        assert decode_state_vector(loaded.get_state()) == decode_state_vector(doc.get_state())
        # Nothing the original has is missing from the reloaded doc, and vice versa.
        check = Doc()
        check.apply_update(loaded.get_update())
        check.apply_update(doc.get_update(loaded.get_state()))
        assert decode_state_vector(check.get_state()) == decode_state_vector(doc.get_state())
        assert content(check) == content(doc)


# -- list_docs -------------------------------------------------------------------------

NAMES = ["a", "a%", "a/b", "a/b/c", "a_", "ab", "z", "é/1", "é/2", "日本/x", "a\U0010ffff"]


async def test_list_docs_pages_and_prefixes(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        for name in NAMES:
            await store.append(ORG, name, b"x", actor="a", at=1)
        await store.append("other", "a/zzz", b"x", actor="a", at=1)
        await store.flush()

        async def names(prefix: str = "", limit: int = 100) -> list[str]:
            out: list[str] = []
            cursor = None
            while True:
                page, cursor = await store.list_docs(ORG, prefix=prefix, limit=limit, cursor=cursor)
                assert len(page) <= limit
                out += [d.name for d in page]
                if cursor is None:
                    return out

        assert await names() == sorted(NAMES)
        assert await names(limit=3) == sorted(NAMES)
        assert await names(limit=1) == sorted(NAMES)
        assert await names("a/") == ["a/b", "a/b/c"]
        assert await names("a_") == ["a_"]  # not "ab": "_" is no wildcard
        assert await names("a%") == ["a%"]
        assert await names("é/", limit=1) == ["é/1", "é/2"]
        assert await names("日本") == ["日本/x"]
        assert await names("a\U0010ffff") == ["a\U0010ffff"]
        assert await names("A") == []  # case-sensitive
        assert await names("nope") == []
        page, cursor = await store.list_docs(ORG, limit=len(NAMES))
        assert len(page) == len(NAMES) and cursor is None
        with pytest.raises(ValueError, match="cursor"):
            await store.list_docs(ORG, cursor="!!not-a-cursor!!")


async def test_list_docs_reports_size_count_and_updated_at(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        doc = Doc()
        first, second = yupdate("abc", doc=doc), yupdate("defg", doc=doc)
        await store.append(ORG, "d", first, actor="a", at=100)
        await (await store.append(ORG, "d", second, actor="a", at=250)).durable
        (info,), _ = await store.list_docs(ORG)
        size = len(first) + len(second)
        assert (info.name, info.size, info.update_count, info.updated_at) == ("d", size, 2, 250)
        await store.compact(ORG, "d", doc.get_update())
        stored = await store.load(ORG, "d")
        assert stored is not None and stored.snapshot is not None
        (info,), _ = await store.list_docs(ORG)
        assert (info.size, info.update_count, info.updated_at) == (len(stored.snapshot), 0, 250)


# -- frames and mutations --------------------------------------------------------------


async def test_frames_sids_filters_bounds_and_trim(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await store.frame_bounds(ORG) == (0, 0)
        sids = []
        for i in range(6):
            sids.append(
                await store.append_frame(
                    ORG,
                    t="issue" if i % 2 == 0 else "user",
                    id=f"{i}/x",
                    op="u",
                    p={"title": f"ü{i}", "n": i},
                    who="alice",
                    at=1000 + i,
                    ctx={"client_tx_id": f"tx{i}"},
                )
            )
        await store.append_frame("other", t="issue", id="9", op="i", p={}, who=None, at=1, ctx={})
        assert sids == sorted(sids) and len(set(sids)) == 6

        frames = await store.frames_since(ORG, 0)
        assert [f.sid for f in frames] == sids
        first = frames[0]
        assert (first.org, first.t, first.id, first.op, first.who, first.at) == (
            ORG, "issue", "0/x", "u", "alice", 1000,
        )  # fmt: skip
        assert first.p == {"title": "ü0", "n": 0} and first.ctx == {"client_tx_id": "tx0"}
        assert [f.sid for f in await store.frames_since(ORG, sids[1])] == sids[2:]
        assert [f.sid for f in await store.frames_since(ORG, 0, limit=2)] == sids[:2]
        issues = await store.frames_since(ORG, 0, t="issue")
        assert [f.sid for f in issues] == sids[0::2]
        assert [f.sid for f in await store.frames_since(ORG, sids[0], t="issue", limit=1)] == [
            sids[2]
        ]
        assert await store.frames_since(ORG, sids[-1]) == []
        assert await store.frame_bounds(ORG) == (sids[0] - 1, sids[-1])

        assert await store.trim_frames(ORG, 2) == 4
        assert await store.frame_bounds(ORG) == (sids[4] - 1, sids[5])
        assert [f.sid for f in await store.frames_since(ORG, 0)] == sids[4:]
        assert await store.trim_frames(ORG, 10) == 0
        assert len(await store.frames_since("other", 0)) == 1  # other orgs untouched
        assert await store.trim_frames(ORG, 0) == 2
        assert await store.frame_bounds(ORG) == (0, 0)
        newer = await store.append_frame(ORG, t="t", id="1", op="d", p={}, who=None, at=1, ctx={})
        assert newer > sids[-1]  # sids are never reused, even after trimming everything


async def test_mutations_first_result_wins(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await store.get_mutation(ORG, "tx-1") is None
        result = {"ok": True, "overwritten": ["title"], "sid": 7, "note": "ünï"}
        await store.put_mutation(ORG, "tx-1", result)
        assert await store.get_mutation(ORG, "tx-1") == result
        await store.put_mutation(ORG, "tx-1", {"ok": False})
        assert await store.get_mutation(ORG, "tx-1") == result
        assert await store.get_mutation("other", "tx-1") is None
        with pytest.raises(ValueError, match="JSON"):
            await store.put_mutation(ORG, "tx-2", {"x": float("nan")})


# -- bad data and failures -------------------------------------------------------------


async def test_corrupt_rows_fail_only_their_doc(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as s:
            bad = await (await s.append(ORG, "bad-log", b"1", actor="a", at=1)).durable
            snap = Doc()
            await s.append(ORG, "bad-snap", yupdate("1", doc=snap), actor="a", at=1)
            await s.append(ORG, "good", b"ok", actor="a", at=1)
            await s.compact(ORG, "bad-snap", snap.get_update())
            await s.append_frame(ORG, t="t", id="1", op="i", p={}, who=None, at=1, ctx={})
            await s.put_mutation(ORG, "tx", {"ok": True})
            conn = raw(path)
            try:
                conn.execute("UPDATE updates SET data = 'garbage' WHERE id = ?", (bad.update_id,))
                conn.execute("UPDATE snapshots SET data = 42 WHERE name = 'bad-snap'")
                conn.execute("UPDATE frames SET p = '{not json'")
                conn.execute("UPDATE mutations SET result = x'00ff'")
            finally:
                conn.close()
            with pytest.raises(StoreReadError, match="bad-log"):
                await s.load(ORG, "bad-log")
            # A compaction cannot merge the unreadable row: it fails alone, drops nothing.
            with pytest.raises(StoreReadError, match="bad-log"):
                await s.compact(ORG, "bad-log", yupdate("x"))
            with pytest.raises(StoreReadError, match="bad-log"):
                await s.load(ORG, "bad-log")
            with pytest.raises(StoreReadError, match="snapshot of 'bad-snap'"):
                await s.load(ORG, "bad-snap")
            with pytest.raises(StoreReadError, match="frame"):
                await s.frames_since(ORG, 0)
            with pytest.raises(StoreReadError, match="mutation"):
                await s.get_mutation(ORG, "tx")
            good = await s.load(ORG, "good")
            assert good is not None and good.updates == [b"ok"]
            docs, _ = await s.list_docs(ORG)
            assert [d.name for d in docs] == ["bad-log", "bad-snap", "good"]


async def test_malformed_file_fails_only_the_damaged_doc(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    blob = os.urandom(200_000)  # stored mostly on overflow pages
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as s:
            await s.append(ORG, "damaged", blob, actor="a", at=1)
            await s.append(ORG, "intact", b"ok", actor="a", at=1)
        assert not await anyio.Path(f"{path}-wal").exists()
        # Closing checkpointed the WAL into the file. Break the "next overflow page"
        # pointer of a page in the middle of the blob, as a bad disk sector would.
        data = bytearray(path.read_bytes())
        page_size = int.from_bytes(data[16:18], "big")
        at = data.find(blob[100_000:100_064])
        assert at > 0
        page = at // page_size * page_size
        data[page : page + 4] = b"\xff\xff\xff\xf0"
        path.write_bytes(bytes(data))
        async with SQLiteStore(path) as s:
            with pytest.raises(StoreReadError, match="malformed"):
                await s.load(ORG, "damaged")
            intact = await s.load(ORG, "intact")
            assert intact is not None and intact.updates == [b"ok"]


async def test_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    text = b"these are my notes, not a database\n" * 200
    path.write_bytes(text)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="is not a crdt-sync database"):
            await SQLiteStore(path).start()
    assert path.read_bytes() == text


async def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = raw(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="is not a crdt-sync database"):
            await SQLiteStore(path).start()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path):
            pass
        conn = raw(path)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        conn.close()
        with pytest.raises(StoreError, match="newer"):
            await SQLiteStore(path).start()


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="does not exist"):
            await SQLiteStore(tmp_path / "missing" / "s.db").start()
    assert not (tmp_path / "missing").exists()


async def test_write_failure_fails_the_batch_then_recovers(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(conn: sqlite3.Connection) -> None:
        # SQLITE_FULL as on a full disk: the file may not grow past its current size.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    def disk_freed(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count = 1073741823")

    doc = Doc()
    small = yupdate("kept", doc=doc)
    big = yupdate("x" * 200_000, doc=doc)  # 200 KB: needs new pages
    with anyio.fail_after(TIMEOUT):
        kept = await (await store.append(ORG, "d", small, actor="a", at=1)).durable
        await store.run_in_writer(disk_full)

        caplog.set_level(logging.ERROR, logger="persistence.sqlite")
        lost = await store.append(ORG, "d", big, actor="a", at=2)
        with pytest.raises(StoreWriteError, match="full"):
            await lost.durable
        # The append failed unawaited-by-flush: the next flush reports it, once.
        with pytest.raises(StoreWriteError, match="full"):
            await store.flush()
        await store.flush()
        with pytest.raises(StoreWriteError, match="full"):
            await store.compact(ORG, "d", doc.get_update())
        failures = [r for r in caplog.records if "failed and was rolled back" in r.getMessage()]
        assert len(failures) == 2  # one line per failed batch
        assert store.stats().failed_batches == 2
        assert store.health() == "write failing"

        await store.run_in_writer(disk_freed)
        again = await (await store.append(ORG, "d", big, actor="a", at=3)).durable
        # The rolled-back append took no id: the chain goes on from the kept one.
        assert (again.update_id, again.prev_update_id) == (kept.update_id + 1, kept.update_id)
        assert store.health() is None
        await store.flush()
        stored = await store.load(ORG, "d")
        assert stored is not None
        assert stored.snapshot is None
        assert stored.updates == [small, big]
        assert stored.last_update_id == again.update_id


async def test_bad_input_is_refused_before_it_can_poison_a_batch(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(ValueError, match="name"):
            await store.append(ORG, "bad\ud800", b"x", actor="a", at=1)
        with pytest.raises(TypeError, match="update"):
            await store.append(ORG, "d", "text", actor="a", at=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="p"):
            await store.append_frame(ORG, t="t", id="1", op="i", p=[], who=None, at=1, ctx={})  # type: ignore[arg-type]
        ok = await store.append(ORG, "d", bytearray(b"x"), actor="a", at=1)
        await ok.durable
        await store.flush()


async def test_calls_before_start_and_after_close(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.db")
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="not started"):
            await s.load(ORG, "d")
        await s.start()
        with pytest.raises(StoreError, match="once"):
            await s.start()
        await s.close()
        await s.close()  # idempotent
        with pytest.raises(StoreClosedError):
            await s.append(ORG, "d", b"x", actor="a", at=1)
        with pytest.raises(StoreClosedError):
            await s.load(ORG, "d")
        with pytest.raises(StoreClosedError):
            await s.flush()


async def test_two_stores_starting_on_one_new_file(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        for attempt in range(5):
            path = tmp_path / f"shared{attempt}.db"
            stores = [SQLiteStore(path), SQLiteStore(path)]
            try:
                async with anyio.create_task_group() as tg:
                    for s in stores:
                        tg.start_soon(s.start)
                a, b = stores
                sid_a = await a.append_frame(
                    ORG, t="t", id="1", op="i", p={}, who="a", at=1, ctx={}
                )
                sid_b = await b.append_frame(
                    ORG, t="t", id="2", op="i", p={}, who="b", at=2, ctx={}
                )
                assert sid_b > sid_a
                assert [f.sid for f in await a.frames_since(ORG, 0)] == [sid_a, sid_b]
                await (await a.append(ORG, "d", b"from a", actor="a", at=1)).durable
                stored = await b.load(ORG, "d")
                assert stored is not None and stored.updates == [b"from a"]
            finally:
                for s in stores:
                    await s.close()
            conn = raw(path)
            try:
                assert conn.execute("SELECT version FROM schema_version").fetchall() == [
                    (SCHEMA_VERSION,)
                ]
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            finally:
                conn.close()


async def test_two_stores_appending_to_one_file_share_its_ids_and_prev_chain(
    tmp_path: Path,
) -> None:
    # Ids are read inside each writer transaction (BEGIN IMMEDIATE): a second store (a
    # second process) on the same file continues the sequence, never collides.
    path = tmp_path / "s.db"
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as a, SQLiteStore(path) as b:
            first = await (await a.append(ORG, "d", b"a", actor="a", at=1)).durable
            second = await (await b.append(ORG, "d", b"b", actor="b", at=2)).durable
            third = await (await a.append(ORG, "d", b"c", actor="a", at=3)).durable
            assert [first.update_id, second.update_id, third.update_id] == [1, 2, 3]
            assert [second.prev_update_id, third.prev_update_id] == [1, 2]
            await b.flush()
            stored = await a.load(ORG, "d")
            assert stored is not None and stored.updates == [b"a", b"b", b"c"]
            assert stored.last_update_id == 3
