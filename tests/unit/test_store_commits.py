"""Store contract v2 on SQLite: ids assigned at commit and returned, the prev chain of
each doc, the staleness rule of frame drafts, compaction without ids (merging what it
drops), ``updates_since`` for gap repair, and no listener API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text

from persistence import SQLiteStore
from persistence.store import Appended, Committed, DocTail, FrameBatch, FrameDraft, Store

pytestmark = pytest.mark.anyio

TIMEOUT = 10
ORG = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db") as s:
        yield s


class Editor:
    """A replica editing one doc: each :meth:`edit` is a real Yjs update of it."""

    def __init__(self, client_id: int) -> None:
        self.doc = Doc(client_id=client_id)

    def edit(self, text: str) -> bytes:
        before = self.doc.get_state()
        body = self.doc.get("body", type=Text)
        body.insert(len(body), text)
        return self.doc.get_update(before)


def text_of(snapshot: bytes | None, updates: list[bytes]) -> str:
    doc = Doc()
    if snapshot is not None:
        doc.apply_update(snapshot)
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("body", type=Text))


def draft(id: str, p: dict, *, update_id: int | None, op: str = "u") -> FrameDraft:
    return FrameDraft(
        t="task", id=id, op=op, p=p, who="a", at=1, ctx={}, record=p, update_id=update_id
    )


async def commit(store: SQLiteStore, name: str, update: bytes, **kw: object) -> Committed:
    appended = await store.append(ORG, name, update, actor="a", at=1, **kw)  # type: ignore[arg-type]
    return await appended.durable


# -- ids at commit, prev chain --------------------------------------------------------------


async def test_ids_are_assigned_at_commit_and_each_doc_chains_to_its_previous(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    a, b = Editor(1), Editor(2)
    with anyio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as s:
            queued = [
                await s.append(ORG, name, editor.edit(text), actor="x", at=1)
                for name, editor, text in (("a", a, "1"), ("b", b, "1"), ("a", a, "2"))
            ]
            # Nothing is handed out before the commit: an Appended is only its commit.
            assert [f.name for f in fields(Appended)] == ["durable"]
            c1, c2, c3 = [await q.durable for q in queued]
            assert (c1.update_id, c1.prev_update_id) == (1, 0)
            assert (c2.update_id, c2.prev_update_id) == (2, 0)  # b's first
            assert (c3.update_id, c3.prev_update_id) == (3, 1)  # a's previous, not b's
            await s.compact(ORG, "a", a.doc.get_update())
            c4 = await commit(s, "a", a.edit("3"))
            assert (c4.update_id, c4.prev_update_id) == (4, 3)  # across the compaction
        async with SQLiteStore(path) as s:  # and across a restart
            c5 = await commit(s, "b", b.edit("2"))
            assert (c5.update_id, c5.prev_update_id) == (5, 2)
            await s.compact(ORG, "a", a.doc.get_update())
        async with SQLiteStore(path) as s:
            c6 = await commit(s, "a", a.edit("4"))
            assert (c6.update_id, c6.prev_update_id) == (6, 4)
            stored = await s.load(ORG, "a")
            assert stored is not None and stored.last_update_id == 6
            assert text_of(stored.snapshot, stored.updates) == "1234"


async def test_appends_of_one_batch_chain_in_queue_order(store: SQLiteStore) -> None:
    editor = Editor(1)
    with anyio.fail_after(TIMEOUT):
        queued = [
            await store.append(ORG, "d", editor.edit(str(i)), actor="x", at=i) for i in range(20)
        ]
        committed = [await q.durable for q in queued]
    assert store.stats().commits < 20  # group-committed
    ids = [c.update_id for c in committed]
    assert ids == list(range(1, 21))
    assert [c.prev_update_id for c in committed] == [0, *ids[:-1]]


# -- frame drafts: settled against the record row ---------------------------------------------


async def test_only_what_is_new_of_a_draft_from_a_current_view_is_logged(
    store: SQLiteStore,
) -> None:
    with anyio.fail_after(TIMEOUT):
        first = await store.log_frames(ORG, FrameBatch((draft("1", {"n": 1}, update_id=5),)))
        assert [f.p for f in first] == [{"n": 1}]
        # Another writer framing the same value: nothing new, no sid taken.
        assert await store.log_frames(ORG, FrameBatch((draft("1", {"n": 1}, update_id=5),))) == []
        # A value from an older view is stale; one without update_id (a node's own
        # change) is logged, and the row keeps the newest update id it covered.
        assert await store.log_frames(ORG, FrameBatch((draft("1", {"n": 2}, update_id=4),))) == []
        [own] = await store.log_frames(ORG, FrameBatch((draft("1", {"n": 2}, update_id=None),)))
        assert own.sid == 2
        # In one batch: the second draft of the same value is nothing new, and the
        # idempotency key remembers the sid of the last frame logged.
        batch = FrameBatch(
            (draft("1", {"n": 3}, update_id=6), draft("1", {"n": 3}, update_id=6)),
            mutation=("tx", {"ok": True}),
        )
        logged = await store.log_frames(ORG, batch)
        assert [(f.sid, f.p) for f in logged] == [(3, {"n": 3})]
        assert await store.get_mutation(ORG, "tx") == {"ok": True, "sid": 3}
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and (record.fields, record.update_id) == ({"n": 3}, 6)
        assert [f.sid for f in await store.frames_since(ORG, 0)] == [1, 2, 3]


async def test_a_draft_without_update_id_covers_its_docs_newest_update_at_its_place(
    store: SQLiteStore,
) -> None:
    editor = Editor(1)
    with anyio.fail_after(TIMEOUT):
        one = await store.append(ORG, "task/1", editor.edit("a"), actor="a", at=1)
        framed = store.log_frames(ORG, FrameBatch((draft("1", {"n": 1}, update_id=None),)))
        two = await store.append(ORG, "task/1", editor.edit("b"), actor="a", at=2)
        first, _, second = await one.durable, await framed, await two.durable
        record = await store.get_record(ORG, "task", "1")
        # Queued between the two appends: it covers the first, not the second.
        assert record is not None and record.update_id == first.update_id
        assert await store.stale_records() == [(ORG, "task/1")]
        # None is never stale, even once the projection is ahead of it.
        again = await store.log_frames(ORG, FrameBatch((draft("1", {"n": 2}, update_id=None),)))
        assert len(again) == 1
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and record.update_id == second.update_id
        assert await store.stale_records() == []


async def test_an_append_logs_only_what_is_new_of_its_drafts(store: SQLiteStore) -> None:
    editor = Editor(1)
    with anyio.fail_after(TIMEOUT):
        await store.log_frames(ORG, FrameBatch((draft("1", {"n": 1}, update_id=9),)))
        committed = await commit(
            store,
            "task/1",
            editor.edit("x"),
            frames=FrameBatch(
                (draft("1", {"n": 1}, update_id=9), draft("2", {"n": 2}, update_id=None))
            ),
        )
        # task/1's draft holds nothing new; task/2's covers the update it rides on.
        assert [(f.id, f.sid) for f in committed.frames] == [("2", 2)]
        record = await store.get_record(ORG, "task", "2")
        assert record is not None and record.update_id == committed.update_id


# -- compaction without ids -------------------------------------------------------------------


async def test_compaction_merges_the_rows_it_drops_into_the_snapshot(store: SQLiteStore) -> None:
    mine, theirs = Editor(1), Editor(2)
    with anyio.fail_after(TIMEOUT):
        await store.append(ORG, "d", mine.edit("mine "), actor="a", at=1)
        # Appended before the compaction by another writer: ``state`` lacks it.
        await store.append(ORG, "d", theirs.edit("theirs"), actor="b", at=2)
        await store.compact(ORG, "d", mine.doc.get_update())
        stored = await store.load(ORG, "d")
        assert stored is not None and stored.updates == []
        assert stored.last_update_id == 2
        merged = text_of(stored.snapshot, [])
        assert "mine " in merged and "theirs" in merged
        # What the snapshot holds twice (state and the row it already covers) is once.
        assert len(merged) == len("mine theirs")


async def test_compaction_drops_exactly_the_rows_appended_before_it(store: SQLiteStore) -> None:
    editor = Editor(1)
    with anyio.fail_after(TIMEOUT):
        for c in "ab":
            await store.append(ORG, "d", editor.edit(c), actor="a", at=1)
        state = editor.doc.get_update()
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.compact, ORG, "d", state)
            await anyio.wait_all_tasks_blocked()  # queued, waiting for its commit
            late_update = editor.edit("c")  # not in ``state``
            late = await store.append(ORG, "d", late_update, actor="a", at=2)
        committed = await late.durable
        stored = await store.load(ORG, "d")
        # Queued after the compaction: the late row stays in the log, after the snapshot.
        assert stored is not None and stored.updates == [late_update]
        assert stored.last_update_id == committed.update_id == 3
        assert text_of(stored.snapshot, []) == "ab"
        assert text_of(stored.snapshot, stored.updates) == "abc"


async def test_a_deleted_doc_stays_deleted_and_a_new_one_is_created(store: SQLiteStore) -> None:
    editor = Editor(1)
    with anyio.fail_after(TIMEOUT):
        await commit(store, "gone", editor.edit("x"))
        assert await store.delete(ORG, "gone")
        await store.compact(ORG, "gone", editor.doc.get_update())  # a late compaction
        assert await store.load(ORG, "gone") is None
        # Never stored: the compaction creates it (a room whose appends failed).
        await store.compact(ORG, "new", editor.doc.get_update())
        stored = await store.load(ORG, "new")
        assert stored is not None and text_of(stored.snapshot, stored.updates) == "x"
        assert stored.last_update_id == 0
        # An append brings a deleted doc back, and with it its compactions.
        again = await commit(store, "gone", editor.edit("y"))
        assert again.prev_update_id == 0
        await store.compact(ORG, "gone", editor.doc.get_update())
        stored = await store.load(ORG, "gone")
        assert stored is not None and text_of(stored.snapshot, stored.updates) == "xy"


# -- updates_since ----------------------------------------------------------------------------


async def test_updates_since_reads_the_log_then_the_snapshot_once_compacted(
    store: SQLiteStore,
) -> None:
    editor = Editor(1)
    with anyio.fail_after(TIMEOUT):
        assert await store.updates_since(ORG, "d", 0) == DocTail(None, [], 0)
        updates = [editor.edit(c) for c in "abc"]
        ids = [(await commit(store, "d", u)).update_id for u in updates]
        tail = await store.updates_since(ORG, "d", ids[0])
        assert tail == DocTail(None, [(ids[1], updates[1]), (ids[2], updates[2])], ids[2])
        assert await store.updates_since(ORG, "d", ids[2]) == DocTail(None, [], ids[2])
        whole = await store.updates_since(ORG, "d", 0)
        assert whole == DocTail(None, list(zip(ids, updates, strict=True)), ids[2])

        await store.compact(ORG, "d", editor.doc.get_update())
        late = editor.edit("d")
        late_id = (await commit(store, "d", late)).update_id
        # ids[0] is behind the snapshot: the replica gets it, then the log after it.
        tail = await store.updates_since(ORG, "d", ids[0])
        assert tail.snapshot is not None and tail.updates == [(late_id, late)]
        assert tail.last_update_id == late_id
        replica = Doc()
        replica.apply_update(updates[0])
        replica.apply_update(tail.snapshot)
        for _, update in tail.updates:
            replica.apply_update(update)
        assert str(replica.get("body", type=Text)) == "abcd"
        # A replica holding the snapshot's state needs only the log after it.
        assert await store.updates_since(ORG, "d", ids[2]) == DocTail(
            None, [(late_id, late)], late_id
        )
        with pytest.raises(ValueError, match="since"):
            await store.updates_since(ORG, "d", -1)


# -- no listeners -----------------------------------------------------------------------------


async def test_the_store_has_no_listener_api(store: SQLiteStore) -> None:
    assert isinstance(store, Store)
    for name in ("add_commit_listener", "add_frame_listener"):
        assert not hasattr(store, name)
        assert not hasattr(Store, name)
    stats = store.stats()
    assert stats.commits == 0 and stats.queued == 0
