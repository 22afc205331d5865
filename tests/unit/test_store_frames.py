"""SQLiteStore's SyncFrame side: frames logged with updates in one transaction, record
projections, idempotency keys, commits settled in sid order, reads, stale records, schema
migration."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Map
from sqlite_utils import Database

from persistence import Frame, SQLiteStore, StoreWriteError
from persistence.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from persistence.store import FrameBatch, FrameDraft
from tests.frame_drafts import KEEP, frame_draft

pytestmark = pytest.mark.anyio

TIMEOUT = 10  # seconds; every test body runs under anyio.fail_after(TIMEOUT)
ORG = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db") as s:
        yield s


_REVISIONS = itertools.count(1)


def draft(
    t: str,
    id: str,
    op: str = "u",
    p: dict[str, Any] | None = None,
    *,
    record: Any = KEEP,
    update_id: int | None = None,
    who: str | None = "alice",
    at: int = 1000,
    ctx: dict[str, Any] | None = None,
) -> FrameDraft:
    """A frame; unless given, the record it leaves behind is ``p`` (none for ``d``).

    The default ``p`` is new each time (a store logs only what is new of a draft)."""
    p = {"title": f"{t}/{id}", "rev": next(_REVISIONS)} if p is None else p
    return frame_draft(t, id, op, p, record=record, update_id=update_id, who=who, at=at, ctx=ctx)


def yupdate(title: str) -> bytes:
    """A real Yjs update setting ``fields.title`` (the same bytes for the same title)."""
    doc = Doc(client_id=1)
    doc.get("fields", type=Map)["title"] = title
    return doc.get_update()


async def refuse_frames_of_type_boom(store: SQLiteStore) -> None:
    """Make every transaction that logs a frame of type ``boom`` fail."""

    def create(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON frames WHEN NEW.t = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom frames are refused'); END"
        )

    await store.run_in_writer(create)


# -- append with frames ------------------------------------------------------------------


async def test_append_logs_update_frames_record_and_key_in_one_transaction(
    store: SQLiteStore,
) -> None:
    with anyio.fail_after(TIMEOUT):
        await store.flush()
        commits = store.stats().commits
        batch = FrameBatch(
            (
                draft("issue", "1", "i", {"title": "Ünï"}, ctx={"client_tx_id": "tx-1"}, at=5),
                draft("issue", "1", "u", {"n": 2}, record={"title": "Ünï", "n": 2}, at=6),
            ),
            mutation=("tx-1", {"ok": True, "id": "1"}),
        )
        appended = await store.append(
            ORG, "issue/1", yupdate("Ünï"), actor="alice", at=5, frames=batch
        )
        committed = await appended.durable
        sids = [f.sid for f in committed.frames]
        assert store.stats().commits == commits + 1
        assert store.stats().last_batch_size == 1
        assert len(sids) == 2 and sids[0] < sids[1]

        stored = await store.load(ORG, "issue/1")
        assert stored is not None and stored.updates == [yupdate("Ünï")]
        page = await store.read_frames(ORG, 0)
        tx, no_tx = {"client_tx_id": "tx-1"}, {"client_tx_id": None}
        assert page.frames == [
            Frame(sids[0], ORG, "issue", "1", "i", {"title": "Ünï"}, "alice", 5, tx),
            Frame(sids[1], ORG, "issue", "1", "u", {"n": 2}, "alice", 6, no_tx),
        ]
        assert committed.frames == page.frames  # what the commit returns is what was stored
        record = await store.get_record(ORG, "issue", "1")
        assert record is not None
        assert record.fields == {"title": "Ünï", "n": 2}
        assert (record.t, record.id, record.sid) == ("issue", "1", sids[1])
        assert record.update_id == committed.update_id
        assert record.updated_at == 6
        assert await store.get_mutation(ORG, "tx-1") == {"ok": True, "id": "1", "sid": sids[1]}


async def test_append_without_frames_resolves_to_no_frames(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        plain = await store.append(ORG, "issue/1", yupdate("a"), actor="a", at=1)
        assert (await plain.durable).frames == []
        empty = await store.append(
            ORG, "issue/1", yupdate("b"), actor="a", at=2, frames=FrameBatch()
        )
        assert (await empty.durable).frames == []
        assert (await store.read_frames(ORG, 0)).frames == []


async def test_failed_frame_fails_the_whole_append_and_nothing_is_stored(
    store: SQLiteStore,
) -> None:
    with anyio.fail_after(TIMEOUT):
        await refuse_frames_of_type_boom(store)
        batch = FrameBatch(
            (draft("ok", "1", "i"), draft("boom", "1", "i")), mutation=("tx-boom", {"ok": True})
        )
        lost = await store.append(ORG, "boom/1", yupdate("x"), actor="a", at=1, frames=batch)
        with pytest.raises(StoreWriteError, match="boom frames are refused"):
            await lost.durable
        with pytest.raises(StoreWriteError):
            await store.flush()  # the failed append is reported once
        await store.flush()

        assert await store.load(ORG, "boom/1") is None
        assert await store.get_record(ORG, "ok", "1") is None
        assert await store.get_mutation(ORG, "tx-boom") is None
        page = await store.read_frames(ORG, 0)
        assert (page.frames, page.oldest, page.newest) == ([], 0, 0)

        # The writer goes on: the next batch commits; the failed one took no id, no sid.
        ok = await store.append(
            ORG, "ok/1", yupdate("y"), actor="a", at=2, frames=FrameBatch((draft("ok", "1"),))
        )
        committed = await ok.durable
        assert (committed.update_id, committed.prev_update_id) == (1, 0)
        assert [f.sid for f in committed.frames] == [1]


# -- log_frames ----------------------------------------------------------------------------


async def test_log_frames_is_synchronous_and_sids_follow_call_order(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        first = store.log_frames(ORG, FrameBatch((draft("a", "1", "i"), draft("b", "1", "i"))))
        second = store.log_frames(ORG, FrameBatch((draft("a", "1", "u", {"title": "changed"}),)))
        only_key = store.log_frames(ORG, FrameBatch(mutation=("tx-0", {"ok": True})))
        assert isinstance(first, asyncio.Future) and not inspect.iscoroutine(first)
        assert not first.done()  # queued, not committed
        first_sids = [f.sid for f in await first]
        second_sids = [f.sid for f in await second]
        assert await only_key == []
        assert first_sids[0] < first_sids[1] < second_sids[0]
        frames = (await store.read_frames(ORG, 0)).frames
        assert [(f.t, f.op) for f in frames] == [("a", "i"), ("b", "i"), ("a", "u")]
        assert await store.get_mutation(ORG, "tx-0") == {"ok": True}  # no frame: no sid


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (draft("a", "1", "x"), ValueError),
        (draft("a", "1", "u", record=None), ValueError),
        (draft("a", "1", "d", record={"title": "x"}), ValueError),
        (draft("a", "1", "u", {"x": float("nan")}), ValueError),
        (draft("a", "1", "u", ctx={"x": float("inf")}), ValueError),
        (draft("a\ud800", "1"), ValueError),
        (draft("a", "1", who=1), TypeError),  # type: ignore[arg-type]
        (draft("a", "1", at=1.5), TypeError),  # type: ignore[arg-type]
        (draft("a", "1", update_id="3"), TypeError),  # type: ignore[arg-type]
    ],
)
async def test_bad_frames_are_refused_at_the_call_and_nothing_is_queued(
    store: SQLiteStore, bad: FrameDraft, error: type[Exception]
) -> None:
    with anyio.fail_after(TIMEOUT):
        good = draft("a", "0", "i")
        with pytest.raises(error):
            store.log_frames(ORG, FrameBatch((good, bad)))
        with pytest.raises(error):
            await store.append(
                ORG, "a/0", yupdate("x"), actor="a", at=1, frames=FrameBatch((good, bad))
            )
        with pytest.raises(TypeError):
            store.log_frames(ORG, FrameBatch(mutation=("tx", ["not", "a", "dict"])))  # type: ignore[arg-type]
        await store.flush()
        assert (await store.read_frames(ORG, 0)).frames == []
        assert await store.load(ORG, "a/0") is None


async def test_log_frames_deletes_the_doc_in_the_same_transaction(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        created = await store.append(
            ORG, "issue/1", yupdate("a"), actor="a", at=1,
            frames=FrameBatch((draft("issue", "1", "i"),)),
        )  # fmt: skip
        inserted = [f.sid for f in (await created.durable).frames]
        kept = await store.append(
            ORG, "issue/2", yupdate("b"), actor="a", at=1,
            frames=FrameBatch((draft("issue", "2", "i"),)),
        )  # fmt: skip
        await kept.durable
        await store.compact(ORG, "issue/1", yupdate("a"))

        gone = store.log_frames(
            ORG,
            FrameBatch((draft("issue", "1", "d", {}),), mutation=("tx-d", {"ok": True})),
            delete="issue/1",
        )
        deleted = [f.sid for f in await gone]
        assert deleted[0] > inserted[0]
        assert await store.load(ORG, "issue/1") is None
        assert await store.get_record(ORG, "issue", "1") is None
        docs, _ = await store.list_docs(ORG)
        assert [d.name for d in docs] == ["issue/2"]
        assert await store.get_record(ORG, "issue", "2") is not None
        assert await store.get_mutation(ORG, "tx-d") == {"ok": True, "sid": deleted[0]}
        ops = [(f.id, f.op) for f in await store.record_frames(ORG, "issue", "1", 0)]
        assert ops == [("1", "i"), ("1", "d")]
        # Deleting a doc that does not exist is not an error.
        assert await store.log_frames(ORG, FrameBatch(), delete="issue/404") == []


async def test_delete_is_rolled_back_with_a_failed_frame(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await (await store.append(ORG, "boom/1", yupdate("x"), actor="a", at=1)).durable
        await refuse_frames_of_type_boom(store)
        with pytest.raises(StoreWriteError, match="boom"):
            await store.log_frames(ORG, FrameBatch((draft("boom", "1", "d"),)), delete="boom/1")
        await store.flush()  # a failed log_frames raised to its caller: nothing left to report
        stored = await store.load(ORG, "boom/1")
        assert stored is not None and stored.updates == [yupdate("x")]


# -- commits in queue order -------------------------------------------------------------


async def test_commits_complete_in_queue_order_with_their_frames(store: SQLiteStore) -> None:
    # Whoever publishes committed frames does it from done-callbacks added at queue time:
    # they run in queue order, so each org's frames come in sid order, before the
    # awaiting writers resume.
    seen: list[tuple[str, list[tuple[str, int]]]] = []

    def record(what: str, frames_of: Any) -> Any:
        def done(commit: asyncio.Future[Any]) -> None:
            frames = frames_of(commit.result())
            seen.append((what, [(f.org, f.sid) for f in frames]))

        return done

    with anyio.fail_after(TIMEOUT):
        appended = await store.append(
            ORG, "a/1", yupdate("x"), actor="a", at=1,
            frames=FrameBatch((draft("a", "1", "i"), draft("a", "1", "u"))),
        )  # fmt: skip
        appended.durable.add_done_callback(record("append", lambda c: c.frames))
        commits: list[asyncio.Future[Any]] = [appended.durable]
        for what, org, batch in (
            ("acme", "acme", FrameBatch((draft("b", "1", "i"),))),
            ("key", ORG, FrameBatch(mutation=("tx", {"ok": True}))),
            ("last", ORG, FrameBatch((draft("c", "1", "i"),))),
        ):
            commit = store.log_frames(org, batch)
            commit.add_done_callback(record(what, lambda frames: frames))
            commits.append(commit)
        for i, commit in enumerate(commits):
            await commit
            assert len(seen) > i  # its callback (and those before it) ran before this
    # Sids are per org: each org's are 1, 2, 3, ... in commit order.
    assert seen == [
        ("append", [(ORG, 1), (ORG, 2)]),
        ("acme", [("acme", 1)]),
        ("key", []),
        ("last", [(ORG, 3)]),
    ]


# -- reads -------------------------------------------------------------------------------


async def _log(store: SQLiteStore, *drafts: FrameDraft, org: str = ORG) -> list[int]:
    return [f.sid for f in await store.log_frames(org, FrameBatch(drafts))]


async def test_read_frames_pages_with_the_tenants_bounds_then_trim(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        empty = await store.read_frames(ORG, 0)
        assert (empty.frames, empty.oldest, empty.newest) == ([], 0, 0)
        sids = await _log(
            store, *(draft("issue" if i % 2 else "user", str(i), "i") for i in range(6))
        )
        await _log(store, draft("issue", "9", "i"), org="acme")

        page = await store.read_frames(ORG, 0)
        assert [f.sid for f in page.frames] == sids
        assert (page.oldest, page.newest) == (sids[0] - 1, sids[-1])
        page = await store.read_frames(ORG, sids[1], limit=2)
        assert [f.sid for f in page.frames] == sids[2:4]
        assert (page.oldest, page.newest) == (sids[0] - 1, sids[-1])
        page = await store.read_frames(ORG, 0, t="user")
        assert [f.sid for f in page.frames] == sids[0::2]
        assert page.newest == sids[-1]  # the tenant's bounds, not the type's
        page = await store.read_frames(ORG, sids[-1])
        assert (page.frames, page.newest) == ([], sids[-1])
        with pytest.raises(ValueError, match="limit"):
            await store.read_frames(ORG, 0, limit=0)

        assert await store.trim_frames(ORG, 2) == 4
        page = await store.read_frames(ORG, 0)
        assert [f.sid for f in page.frames] == sids[4:]
        assert (page.oldest, page.newest) == (sids[4] - 1, sids[-1])
        assert 0 < page.oldest  # a client at since=0 can tell it missed frames
        acme = await store.read_frames("acme", 0)
        assert len(acme.frames) == 1  # other tenants are not trimmed

        assert await store.trim_frames(ORG, 0) == 2
        page = await store.read_frames(ORG, 0)
        assert (page.frames, page.oldest, page.newest) == ([], 0, 0)
        later = await _log(store, draft("issue", "1", "u"))
        assert later[0] > sids[-1]  # sids are never reused
        page = await store.read_frames(ORG, 0)
        assert (page.oldest, page.newest) == (later[0] - 1, later[0])


async def test_record_frames_are_one_records_frames(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        sids = await _log(
            store,
            draft("issue", "1/x", "i"),
            draft("issue", "1", "i"),
            draft("user", "1/x", "i"),
            draft("issue", "1/x", "u", {"n": 1}, record={"n": 1}),
        )
        await _log(store, draft("issue", "1/x", "i"), org="acme")
        frames = await store.record_frames(ORG, "issue", "1/x", 0)
        assert [f.sid for f in frames] == [sids[0], sids[3]]
        assert frames[1].p == {"n": 1}
        assert [f.sid for f in await store.record_frames(ORG, "issue", "1/x", sids[0])] == [sids[3]]
        assert await store.record_frames(ORG, "issue", "1/x", sids[3]) == []
        assert len(await store.record_frames(ORG, "issue", "1/x", 0, limit=1)) == 1


async def test_get_record_and_list_records_in_t_id_order(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        ids = [("user", "b"), ("issue", "2"), ("issue", "10"), ("issue", "1"), ("issue", "9")]
        await _log(store, *(draft(t, i, "i", {"k": f"{t}{i}"}) for t, i in ids))
        await _log(store, draft("issue", "9", "d"))  # deleted: no longer listed
        await _log(store, draft("issue", "0", "i"), org="acme")
        last = await _log(store, draft("issue", "2", "u", {"k": 2}, record={"k": 2}, at=77))

        rows, newest = await store.list_records(ORG)
        assert [(r.t, r.id) for r in rows] == [
            ("issue", "1"), ("issue", "10"), ("issue", "2"), ("user", "b"),
        ]  # fmt: skip
        assert newest == last[0]
        two = rows[2]
        assert (two.fields, two.sid, two.updated_at) == ({"k": 2}, last[0], 77)
        assert await store.get_record(ORG, "issue", "2") == two
        assert await store.get_record(ORG, "issue", "9") is None
        assert await store.get_record("acme", "issue", "2") is None

        rows, _ = await store.list_records(ORG, after=("issue", "10"))
        assert [(r.t, r.id) for r in rows] == [("issue", "2"), ("user", "b")]
        rows, _ = await store.list_records(ORG, t="issue", limit=2)
        assert [r.id for r in rows] == ["1", "10"]
        rows, _ = await store.list_records(ORG, t="issue", after=("issue", "10"))
        assert [r.id for r in rows] == ["2"]
        rows, _ = await store.list_records(ORG, t="user", after=("issue", "zzz"))
        assert [r.id for r in rows] == ["b"]
        rows, _ = await store.list_records(ORG, t="issue", after=("issue", "2"))
        assert rows == []
        rows, newest = await store.list_records("nobody")
        assert (rows, newest) == ([], 0)
        with pytest.raises(ValueError, match="limit"):
            await store.list_records(ORG, limit=0)


async def test_record_update_id_never_goes_back(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        await _log(store, draft("issue", "1", "i", {"n": 0}, update_id=10))
        # Drafted from an older view than the row's: stale, not logged.
        assert await _log(store, draft("issue", "1", "u", {"n": 1}, update_id=4)) == []
        # Covers the doc's newest update (there is none: 0), below what is stored.
        assert len(await _log(store, draft("issue", "1", "u", {"n": 2}))) == 1
        record = await store.get_record(ORG, "issue", "1")
        assert record is not None and record.update_id == 10
        assert record.fields == {"n": 2}


async def test_stale_records(store: SQLiteStore) -> None:
    async def append(name: str, *drafts: FrameDraft, org: str = ORG) -> int:
        frames = FrameBatch(drafts) if drafts else None
        appended = await store.append(org, name, yupdate(name), actor="a", at=1, frames=frames)
        return (await appended.durable).update_id

    with anyio.fail_after(TIMEOUT):
        await append("issue/fresh", draft("issue", "fresh", "i"))
        await append("issue/never")  # no frame at all, no records row
        await append("issue/behind", draft("issue", "behind", "i"))
        behind = await append("issue/behind")  # a change whose frame was lost
        compacted = await append("issue/compacted", draft("issue", "compacted", "i"))
        await store.compact(ORG, "issue/compacted", yupdate("c"))
        assert (await store.load(ORG, "issue/compacted")).last_update_id == compacted  # type: ignore[union-attr]
        nested = await append("issue/a/b")  # t = "issue", id = "a/b"
        await append("team/x", draft("team", "x", "i"), org="acme")
        await append("team/y", org="acme")
        for plain in ("plain", "/no-type", "no-id/"):
            await append(plain)
        assert sorted(await store.stale_records()) == [
            ("acme", "team/y"),
            (ORG, "issue/a/b"),
            (ORG, "issue/behind"),
            (ORG, "issue/never"),
        ]
        assert len(await store.stale_records(limit=2)) == 2

        # Framing what the log holds makes them current again.
        await _log(store, draft("issue", "behind", "u", update_id=behind))
        await _log(store, draft("issue", "a/b", "i", update_id=nested))
        stale = sorted(await store.stale_records())
        assert stale == [("acme", "team/y"), (ORG, "issue/never")]


# -- idempotency keys --------------------------------------------------------------------


async def test_mutation_result_is_stored_with_its_sid_and_first_wins(store: SQLiteStore) -> None:
    with anyio.fail_after(TIMEOUT):
        frames = await store.log_frames(
            ORG,
            FrameBatch(
                (draft("issue", "1", "i"), draft("issue", "2", "i")),
                mutation=("tx-1", {"ok": True, "ids": ["1", "2"], "note": "ünï"}),
            ),
        )
        sids = [f.sid for f in frames]
        expected = {"ok": True, "ids": ["1", "2"], "note": "ünï", "sid": sids[-1]}
        assert await store.get_mutation(ORG, "tx-1") == expected
        await store.log_frames(
            ORG, FrameBatch((draft("issue", "3", "i"),), mutation=("tx-1", {"ok": False}))
        )
        assert await store.get_mutation(ORG, "tx-1") == expected
        assert await store.get_mutation("acme", "tx-1") is None


# -- schema migration --------------------------------------------------------------------


def make_v1_database(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        db = Database(conn)
        db.execute("BEGIN IMMEDIATE")
        MIGRATIONS[0](db)
        db.create_table("schema_version", {"version": int}, not_null=["version"])
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute(
            "INSERT INTO documents (org, name, created_at, updated_at) VALUES (?, ?, 1, 2)",
            [ORG, "issue/1"],
        )
        db.execute(
            "INSERT INTO updates (id, org, name, data, actor, at) VALUES (7, ?, ?, ?, 'a', 2)",
            [ORG, "issue/1", yupdate("old")],
        )
        db.execute(
            "INSERT INTO frames (org, t, id, op, p, who, at, ctx) "
            "VALUES (?, 'issue', '1', 'i', '{\"title\":\"old\"}', 'a', 2, '{}')",
            [ORG],
        )
        db.execute(
            "INSERT INTO mutations (org, client_tx_id, result, at) VALUES (?, 'tx-old', ?, 2)",
            [ORG, '{"ok":true}'],
        )
        db.execute("COMMIT")
    finally:
        conn.close()


async def test_version_1_database_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_v1_database(path)
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 4
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as s:
            stored = await s.load(ORG, "issue/1")
            assert stored is not None
            assert (stored.updates, stored.last_update_id) == ([yupdate("old")], 7)
            old = (await s.read_frames(ORG, 0)).frames
            assert [(f.t, f.id, f.op, f.p) for f in old] == [("issue", "1", "i", {"title": "old"})]
            assert await s.get_mutation(ORG, "tx-old") == {"ok": True}  # no sid column value
            # Unframed history of a record doc: stale until framed.
            assert await s.stale_records() == [(ORG, "issue/1")]
            appended = await s.append(
                ORG, "issue/1", yupdate("new"), actor="a", at=3,
                frames=FrameBatch((draft("issue", "1", "u"),), mutation=("tx-new", {"ok": 1})),
            )  # fmt: skip
            committed = await appended.durable
            assert (committed.update_id, committed.prev_update_id) == (8, 7)
            sids = [f.sid for f in committed.frames]
            assert sids[0] > old[0].sid
            assert await s.get_mutation(ORG, "tx-new") == {"ok": 1, "sid": sids[0]}
            assert await s.stale_records() == []
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"records", "frame_seq", "idx_frames_record", "deleted_docs"} <= tables
        # The doc's newest update id, kept for its prev chain.
        assert conn.execute("SELECT last_update_id FROM documents").fetchall() == [(8,)]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(mutations)")]
        assert "sid" in columns
    finally:
        conn.close()
