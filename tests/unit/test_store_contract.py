"""The Store contract (persistence/store.py), one suite for every backend.

Each test runs against ``memory``, ``sqlite`` and ``postgres`` (see
tests/store_backends.py) through the public contract only: what passes here on one
backend passes on all of them, and a backend that passes it can stand in for another.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pycrdt import Doc, Map

from persistence.store import (
    Commit,
    Committed,
    DocTail,
    Frame,
    FrameBatch,
    FrameDraft,
    Store,
    StoreClosedError,
    StoredDoc,
)
from persistence.values import UnstorableValue
from tests.frame_drafts import KEEP, frame_draft

pytestmark = pytest.mark.anyio

TIMEOUT = 10  # seconds; every test body runs under anyio.fail_after(TIMEOUT)
ORG = "acme"
OTHER = "globex"  # a second tenant: nothing of ORG may show through it


# -- backends ----------------------------------------------------------------------------


# -- helpers -----------------------------------------------------------------------------


class Replica:
    """A client's copy of a doc: ``set`` returns the Yjs update of one field change."""

    def __init__(self, client_id: int) -> None:
        self.doc = Doc(client_id=client_id)
        self.fields = self.doc.get("fields", type=Map)

    def set(self, key: str, value: Any) -> bytes:
        before = self.doc.get_state()
        self.fields[key] = value
        return self.doc.get_update(before)

    def state(self) -> bytes:
        return self.doc.get_update()


def content(*updates: bytes | None) -> dict[str, Any]:
    """The ``fields`` map of a doc built from ``updates`` (``None``s skipped)."""
    doc = Doc()
    for update in updates:
        if update is not None:
            doc.apply_update(update)
    return doc.get("fields", type=Map).to_py()


def stored_content(stored: StoredDoc | None) -> dict[str, Any]:
    assert stored is not None
    return content(stored.snapshot, *stored.updates)


def draft(
    t: str,
    id: str,
    op: str = "i",
    p: dict[str, Any] | None = None,
    *,
    record: Any = KEEP,
    update_id: int | None = None,
    who: str | None = "ann",
    at: int = 1000,
    ctx: dict[str, Any] | None = None,
) -> FrameDraft:
    """A frame draft; unless given, the record it leaves behind is ``p`` (none for ``d``)."""
    p = ({} if op == "d" else {"title": f"{t}/{id}"}) if p is None else p
    return frame_draft(t, id, op, p, record=record, update_id=update_id, who=who, at=at, ctx=ctx)


def batch(*drafts: FrameDraft, mutation: tuple[str, dict[str, Any]] | None = None) -> FrameBatch:
    return FrameBatch(frames=drafts, mutation=mutation)


async def append(
    store: Store,
    name: str,
    update: bytes,
    *,
    org: str = ORG,
    at: int = 1000,
    frames: FrameBatch | None = None,
) -> Committed:
    appended = await store.append(org, name, update, actor="ann", at=at, frames=frames)
    return await appended.durable


async def log(store: Store, *drafts: FrameDraft, org: str = ORG) -> list[Frame]:
    return await store.log_frames(org, batch(*drafts))


async def add_frame(
    store: Store,
    t: str = "task",
    id: str = "1",
    *,
    org: str = ORG,
    op: str = "u",
    p: dict[str, Any] | None = None,
    who: str | None = "ann",
    ctx: dict[str, Any] | None = None,
) -> int:
    return await store.append_frame(
        org, t=t, id=id, op=op, p={"n": 1} if p is None else p, who=who, at=7, ctx=ctx or {}
    )


def sids(frames: list[Frame]) -> list[int]:
    return [frame.sid for frame in frames]


# -- lifecycle, health, stats ------------------------------------------------------------


async def test_it_is_a_store_and_healthy(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        assert isinstance(store, Store)
        assert store.health() is None
        await store.probe()
        assert store.health() is None
        await store.flush()


async def test_close_commits_what_is_queued(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        appended = await store.append(ORG, "doc", Replica(1).set("a", 1), actor="ann", at=1)
        logged = store.log_frames(ORG, batch(draft("task", "1")))
        await store.close()
        assert appended.durable.done() and logged.done()
        assert appended.durable.result().prev_update_id == 0
        assert sids(logged.result()) == [1]
        assert store.health() is not None  # closed: writes are not going through
        await store.close()  # idempotent


async def test_every_method_refuses_a_closed_store(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await append(store, "doc", Replica(1).set("a", 1))
        await store.close()
        calls = {
            "append": lambda: store.append(ORG, "doc", b"", actor="ann", at=1),
            "load": lambda: store.load(ORG, "doc"),
            "has_doc": lambda: store.has_doc(ORG, "doc"),
            "updates_since": lambda: store.updates_since(ORG, "doc", 0),
            "flush": lambda: store.flush(),
            "probe": lambda: store.probe(),
            "compact": lambda: store.compact(ORG, "doc", Replica(1).state()),
            "delete": lambda: store.delete(ORG, "doc"),
            "list_docs": lambda: store.list_docs(ORG),
            "append_frame": lambda: add_frame(store),
            "frames_since": lambda: store.frames_since(ORG, 0),
            "read_frames": lambda: store.read_frames(ORG, 0),
            "frame_bounds": lambda: store.frame_bounds(ORG),
            "trim_frames": lambda: store.trim_frames(ORG, 1),
            "record_frames": lambda: store.record_frames(ORG, "task", "1", 0),
            "record_writers": lambda: store.record_writers(
                ORG, "task", "1", 0, ["a"], exclude=(None, None)
            ),
            "get_record": lambda: store.get_record(ORG, "task", "1"),
            "list_records": lambda: store.list_records(ORG, limit=10),
            "stale_records": lambda: store.stale_records(),
            "put_mutation": lambda: store.put_mutation(ORG, "k", {}),
            "get_mutation": lambda: store.get_mutation(ORG, "k"),
        }
        for name, call in calls.items():
            with pytest.raises(StoreClosedError):
                await call()
                pytest.fail(f"{name} worked on a closed store")
        with pytest.raises(StoreClosedError):
            store.log_frames(ORG, batch(draft("task", "1")))


async def test_stats_count_queued_writes_and_commits(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await store.flush()
        before = store.stats()
        appended = await store.append(ORG, "doc", Replica(1).set("a", 1), actor="ann", at=1)
        queued = store.stats()
        assert queued.queued >= 1 or queued.queued_bytes > 0
        await appended.durable
        await store.flush()
        after = store.stats()
        assert after.commits > before.commits
        assert after.queued == 0 and after.queued_bytes == 0
        assert after.last_batch_size >= 1 and after.last_commit_seconds >= 0
        assert after.failed_batches == before.failed_batches == 0


async def test_a_batch_that_is_not_strict_json_is_refused_before_queueing(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        refused = store.stats().refused_batches
        with pytest.raises(UnstorableValue):
            store.log_frames(ORG, batch(draft("task", "1", p={"n": math.nan})))
        with pytest.raises(UnstorableValue):
            await store.append(
                ORG,
                "task/1",
                Replica(1).set("a", 1),
                actor="ann",
                at=1,
                frames=batch(draft("task", "1", p={"bad": "\ud800"})),
            )
        assert store.stats().refused_batches == refused + 2
        await store.flush()
        assert (await store.read_frames(ORG, 0)).frames == []
        assert await store.stale_records() == []  # the append was not queued either


# -- appends and update ids --------------------------------------------------------------


async def test_append_returns_once_queued_and_the_commit_assigns_the_id(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        appended = await store.append(ORG, "doc", Replica(1).set("a", 1), actor="ann", at=1)
        assert isinstance(appended.durable, Commit)
        assert not appended.durable.done()  # queued, not committed
        committed = await appended.durable
        assert isinstance(committed, Committed)
        assert committed.update_id > 0 and committed.prev_update_id == 0
        assert committed.frames == []


async def test_update_ids_grow_per_doc_in_call_order_and_chain(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a, b = Replica(1), Replica(2)
        queued = []
        for i in range(3):  # interleaved, all queued before any commit is awaited
            for name, replica, org in (("a", a, ORG), ("b", b, ORG), ("a", b, OTHER)):
                appended = await store.append(org, name, replica.set(f"k{i}", i), actor="ann", at=i)
                queued.append(((org, name), appended))
        chains: dict[tuple[str, str], list[Committed]] = {}
        for key, appended in queued:
            chains.setdefault(key, []).append(await appended.durable)
        for commits in chains.values():
            assert commits[0].prev_update_id == 0
            for earlier, later in itertools.pairwise(commits):
                assert later.update_id > earlier.update_id
                assert later.prev_update_id == earlier.update_id
        for (org, name), commits in chains.items():
            stored = await store.load(org, name)
            assert stored is not None and stored.last_update_id == commits[-1].update_id
            tail = await store.updates_since(org, name, 0)
            assert [update_id for update_id, _ in tail.updates] == [c.update_id for c in commits]


async def test_prev_update_id_is_the_newest_id_whatever_compaction_did(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        first = await append(store, "doc", a.set("x", 1))
        await store.compact(ORG, "doc", a.state())
        second = await append(store, "doc", a.set("x", 2))
        assert second.prev_update_id == first.update_id
        await store.compact(ORG, "doc", a.state())
        assert (await store.updates_since(ORG, "doc", 0)).last_update_id == second.update_id
        third = await append(store, "doc", a.set("x", 3))
        assert third.prev_update_id == second.update_id


async def test_load_returns_the_log_in_order_per_org(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await store.load(ORG, "doc") is None
        assert not await store.has_doc(ORG, "doc")
        a = Replica(1)
        updates = [a.set("x", 1), a.set("y", 2), a.set("x", 3)]
        commits = [await append(store, "doc", u) for u in updates]
        stored = await store.load(ORG, "doc")
        assert stored == StoredDoc(None, updates, commits[-1].update_id)
        assert stored_content(stored) == {"x": 3, "y": 2}
        assert await store.has_doc(ORG, "doc")
        assert await store.load(OTHER, "doc") is None
        assert not await store.has_doc(OTHER, "doc")


# -- compaction --------------------------------------------------------------------------


async def test_compact_folds_the_log_into_the_snapshot(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        await append(store, "doc", a.set("x", 1))
        last = await append(store, "doc", a.set("y", 2))
        await store.compact(ORG, "doc", a.state())
        stored = await store.load(ORG, "doc")
        assert stored is not None and stored.snapshot is not None
        assert stored.updates == [] and stored.last_update_id == last.update_id
        assert stored_content(stored) == {"x": 1, "y": 2}
        later = a.set("z", 3)
        committed = await append(store, "doc", later)
        stored = await store.load(ORG, "doc")
        assert stored is not None and stored.updates == [later]
        assert stored.last_update_id == committed.update_id
        assert stored_content(stored) == {"x": 1, "y": 2, "z": 3}


async def test_compact_merges_what_another_writer_logged(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a, b = Replica(1), Replica(2)
        await append(store, "doc", a.set("x", 1))
        last = await append(store, "doc", b.set("y", 2))  # a never saw this one
        await store.compact(ORG, "doc", a.state())
        stored = await store.load(ORG, "doc")
        assert stored is not None and stored.updates == []
        assert stored.last_update_id == last.update_id
        assert stored_content(stored) == {"x": 1, "y": 2}


async def test_compact_keeps_what_an_earlier_compaction_folded_in(store: Store) -> None:
    # Two nodes compact in turn, each with the state it holds: neither loses the other's.
    with anyio.fail_after(TIMEOUT):
        a, b = Replica(1), Replica(2)
        await append(store, "doc", a.set("x", 1))
        await append(store, "doc", b.set("y", 2))
        await store.compact(ORG, "doc", a.state())  # folds in b's update
        await append(store, "doc", b.set("z", 3))
        await store.compact(ORG, "doc", b.state())  # b never saw x
        assert stored_content(await store.load(ORG, "doc")) == {"x": 1, "y": 2, "z": 3}


async def test_compact_keeps_appends_queued_around_it(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        await append(store, "doc", a.set("x", 1))
        state = a.state()
        racing = a.set("y", 2)
        compacting = asyncio.create_task(store.compact(ORG, "doc", state))
        await anyio.lowlevel.checkpoint()
        committed = await append(store, "doc", racing)
        await compacting
        after = a.set("z", 3)
        await append(store, "doc", after)
        stored = await store.load(ORG, "doc")
        assert stored is not None and stored_content(stored) == {"x": 1, "y": 2, "z": 3}
        assert stored.updates[-1] == after
        assert stored.last_update_id > committed.update_id


async def test_compact_creates_a_doc_never_stored_but_not_a_deleted_one(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        a.set("x", 1)
        await store.compact(ORG, "new", a.state())
        assert await store.has_doc(ORG, "new")
        stored = await store.load(ORG, "new")
        assert stored is not None and stored.updates == [] and stored.last_update_id == 0
        assert stored_content(stored) == {"x": 1}
        assert not await store.has_doc(OTHER, "new")

        await append(store, "gone", a.set("y", 2))
        assert await store.delete(ORG, "gone")
        await store.compact(ORG, "gone", a.state())  # a room that still held it
        assert not await store.has_doc(ORG, "gone")
        assert await store.load(ORG, "gone") is None


# -- updates_since -----------------------------------------------------------------------


async def test_updates_since_an_unknown_doc_is_empty(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await store.updates_since(ORG, "nope", 0) == DocTail(None, [], 0)
        await append(store, "doc", Replica(1).set("x", 1))
        assert await store.updates_since(OTHER, "doc", 0) == DocTail(None, [], 0)


async def test_updates_since_reads_the_log_after_since(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        updates = [a.set("x", i) for i in range(3)]
        ids = [(await append(store, "doc", u)).update_id for u in updates]
        log = list(zip(ids, updates, strict=True))
        assert await store.updates_since(ORG, "doc", 0) == DocTail(None, log, ids[2])
        assert await store.updates_since(ORG, "doc", ids[0]) == DocTail(None, log[1:], ids[2])
        assert await store.updates_since(ORG, "doc", ids[2]) == DocTail(None, [], ids[2])


async def test_updates_since_before_a_compaction_hands_out_the_snapshot(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a, replica = Replica(1), Doc()
        first = a.set("x", 1)
        i1 = (await append(store, "doc", first)).update_id
        replica.apply_update(first)  # a replica holding the doc up to i1
        i2 = (await append(store, "doc", a.set("y", 2))).update_id
        await store.compact(ORG, "doc", a.state())
        third = a.set("z", 3)
        i3 = (await append(store, "doc", third)).update_id

        tail = await store.updates_since(ORG, "doc", i1)  # the log after i1 is gone
        assert tail.snapshot is not None
        assert tail.updates == [(i3, third)] and tail.last_update_id == i3
        replica.apply_update(tail.snapshot)
        for _, update in tail.updates:
            replica.apply_update(update)
        assert replica.get("fields", type=Map).to_py() == {"x": 1, "y": 2, "z": 3}

        # Everything after i2 is still in the log: no snapshot needed.
        assert await store.updates_since(ORG, "doc", i2) == DocTail(None, [(i3, third)], i3)


# -- delete ------------------------------------------------------------------------------


async def test_delete_removes_the_doc_but_not_its_feed(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        frames = batch(draft("task", "1"), mutation=("tx-1", {"ok": True}))
        committed = await append(store, "task/1", a.set("title", "t"), frames=frames)
        await append(store, "task/1", a.set("x", 1), org=OTHER)
        assert await store.delete(ORG, "task/1") is True
        assert await store.delete(ORG, "task/1") is False
        assert await store.delete(ORG, "never") is False
        assert await store.load(ORG, "task/1") is None
        assert not await store.has_doc(ORG, "task/1")
        assert await store.list_docs(ORG) == ([], None)
        assert await store.updates_since(ORG, "task/1", 0) == DocTail(None, [], 0)
        assert await store.stale_records() == [(OTHER, "task/1")]
        # The frame log, the record row and the idempotency key are the feed's: they stay.
        assert sids(await store.frames_since(ORG, 0)) == sids(committed.frames)
        assert await store.get_record(ORG, "task", "1") is not None
        assert await store.get_mutation(ORG, "tx-1") == {"ok": True, "sid": 1}
        # The other tenant's doc of the same name is untouched.
        assert stored_content(await store.load(OTHER, "task/1")) == {"x": 1}
        # Appending again starts a new doc.
        again = a.set("y", 2)
        recreated = await append(store, "task/1", again)
        assert recreated.prev_update_id == 0
        stored = await store.load(ORG, "task/1")
        assert stored == StoredDoc(None, [again], recreated.update_id)


async def test_log_frames_deletes_a_doc_in_the_same_commit(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await append(store, "task/1", Replica(1).set("a", 1), frames=batch(draft("task", "1")))
        logged = await store.log_frames(ORG, batch(draft("task", "1", "d")), delete="task/1")
        assert [(f.sid, f.op) for f in logged] == [(2, "d")]
        assert not await store.has_doc(ORG, "task/1")
        assert await store.get_record(ORG, "task", "1") is None
        assert sids(await store.frames_since(ORG, 0)) == [1, 2]


# -- list_docs ---------------------------------------------------------------------------


async def test_list_docs_pages_by_name_in_code_point_order(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        names = ["b", "B", "a", "a/b", "ab", "a%c", "a_c", "é", "Z"]
        a = Replica(1)
        for name in names:
            await append(store, name, a.set(name, 1))
        await append(store, "a", a.set("other", 1), org=OTHER)
        ordered = ["B", "Z", "a", "a%c", "a/b", "a_c", "ab", "b", "é"]

        seen, cursor, pages = [], None, 0
        while pages < len(names):  # bounded
            page, cursor = await store.list_docs(ORG, limit=4, cursor=cursor)
            seen.append([info.name for info in page])
            pages += 1
            if cursor is None:
                break
        assert seen == [ordered[:4], ordered[4:8], ordered[8:]]

        everything, cursor = await store.list_docs(ORG, limit=len(names))
        assert [info.name for info in everything] == ordered and cursor is None
        assert [i.name for i in (await store.list_docs(OTHER))[0]] == ["a"]


async def test_list_docs_prefix_is_literal(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        for name in ["a", "a%c", "a/b", "a_c", "ab", "abc", "b"]:
            await append(store, name, a.set(name, 1))

        async def names(prefix: str, **kw: Any) -> tuple[list[str], str | None]:
            page, cursor = await store.list_docs(ORG, prefix=prefix, **kw)
            return [info.name for info in page], cursor

        assert await names("a") == (["a", "a%c", "a/b", "a_c", "ab", "abc"], None)
        assert await names("a%") == (["a%c"], None)
        assert await names("a_") == (["a_c"], None)
        assert await names("A") == ([], None)
        first, cursor = await names("ab", limit=1)
        assert first == ["ab"] and cursor is not None
        assert await names("ab", limit=1, cursor=cursor) == (["abc"], None)


async def test_list_docs_refuses_bad_paging(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(ValueError):
            await store.list_docs(ORG, limit=0)
        with pytest.raises(ValueError):
            await store.list_docs(ORG, cursor="!!")


async def test_doc_info_counts_the_log_and_the_snapshot(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        u1, u2 = a.set("x", 1), a.set("y", "two")
        await append(store, "doc", u1, at=9)
        await append(store, "doc", u2, at=5)  # updated_at never goes back
        [info], _ = await store.list_docs(ORG)
        assert (info.name, info.size, info.update_count, info.updated_at) == (
            "doc",
            len(u1) + len(u2),
            2,
            9,
        )
        await store.compact(ORG, "doc", a.state())
        stored = await store.load(ORG, "doc")
        assert stored is not None and stored.snapshot is not None
        [info], _ = await store.list_docs(ORG)
        assert (info.size, info.update_count, info.updated_at) == (len(stored.snapshot), 0, 9)


# -- frames: sids, logging, staleness ----------------------------------------------------


async def test_frames_are_numbered_per_org(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        got: dict[str, list[int]] = {ORG: [], OTHER: []}
        for i in range(3):
            for org in (ORG, OTHER):
                got[org] += sids(await log(store, draft("task", f"l{i}"), org=org))
                got[org].append(await add_frame(store, id=f"f{i}", org=org))
                committed = await append(
                    store,
                    f"task/a{i}",
                    Replica(1).set("a", i),
                    org=org,
                    frames=batch(draft("task", f"a{i}"), draft("note", f"a{i}")),
                )
                got[org] += sids(committed.frames)
        assert got[ORG] == got[OTHER] == list(range(1, 13))
        for org in (ORG, OTHER):
            page = await store.read_frames(org, 0)
            assert sids(page.frames) == list(range(1, 13))
            assert {f.org for f in page.frames} == {org}
            assert (page.oldest, page.newest) == (0, 12)


async def test_frames_queued_one_after_another_get_sids_in_that_order(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        first = store.log_frames(ORG, batch(draft("task", "1")))
        assert isinstance(first, Commit) and not first.done()
        second = await store.append(
            ORG,
            "task/2",
            Replica(1).set("a", 1),
            actor="ann",
            at=1,
            frames=batch(draft("task", "2")),
        )
        third = store.log_frames(ORG, batch(draft("task", "3"), draft("task", "4")))
        assert sids(await first) == [1]
        assert sids((await second.durable).frames) == [2]
        assert sids(await third) == [3, 4]


async def test_append_logs_frames_records_and_key_with_the_update(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        tx = {"client_tx_id": "tx-1", "client_id": "c1"}
        frames = batch(
            draft("issue", "1", "i", {"title": "Ünï", "tags": ["a", 1]}, ctx=tx, at=5),
            draft(
                "issue", "1", "u", {"n": 2}, record={"title": "Ünï", "tags": ["a", 1], "n": 2}, at=6
            ),
            mutation=("tx-1", {"ok": True, "id": "1"}),
        )
        committed = await append(store, "issue/1", Replica(1).set("t", 1), frames=frames)
        no_tx = {"client_tx_id": None}
        expected = [
            Frame(1, ORG, "issue", "1", "i", {"title": "Ünï", "tags": ["a", 1]}, "ann", 5, tx),
            Frame(2, ORG, "issue", "1", "u", {"n": 2}, "ann", 6, no_tx),
        ]
        assert committed.frames == expected
        assert (await store.read_frames(ORG, 0)).frames == expected
        record = await store.get_record(ORG, "issue", "1")
        assert record is not None
        fields = {"title": "Ünï", "tags": ["a", 1], "n": 2}
        assert (record.t, record.id, record.fields) == ("issue", "1", fields)
        assert (record.sid, record.update_id, record.updated_at) == (2, committed.update_id, 6)
        assert await store.get_mutation(ORG, "tx-1") == {"ok": True, "id": "1", "sid": 2}
        assert await store.stale_records() == []


async def test_a_draft_from_an_older_view_than_the_row_is_stale(store: Store) -> None:
    # persistence.framing.settle: a draft with an update_id comes from a node holding
    # the doc up to that update; a row framed from a newer view already holds it.
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        committed = await append(
            store, "task/1", a.set("n", 1), frames=batch(draft("task", "1", p={"n": 1}))
        )
        covered = committed.update_id
        # The same state again, from another node: nothing new, no sid taken.
        assert await log(store, draft("task", "1", "u", {"n": 1}, update_id=covered)) == []
        newer = (await append(store, "task/1", a.set("n", 2))).update_id
        assert await store.stale_records() == [(ORG, "task/1")]
        [frame] = await log(store, draft("task", "1", "u", {"n": 2}, update_id=newer))
        assert frame.sid == 2
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and (record.fields, record.update_id) == ({"n": 2}, newer)
        assert await store.stale_records() == []
        # A node that has not seen the newer update yet drafts what it saw: stale,
        # so the record does not go back to n=1 (and forward again later).
        assert await log(store, draft("task", "1", "u", {"n": 1}, update_id=covered)) == []
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and (record.fields, record.update_id) == ({"n": 2}, newer)
        # Another node framing the same change later: exactly once.
        assert await log(store, draft("task", "1", "u", {"n": 2}, update_id=newer)) == []
        assert sids(await store.frames_since(ORG, 0)) == [1, 2]


async def test_a_nodes_own_change_is_never_refused_as_stale(store: Store) -> None:
    # A draft without update_id is a node's own change, queued after its update and
    # drafted before the update's id is known: only what is new against the row counts.
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        await append(store, "task/1", a.set("n", 1), frames=batch(draft("task", "1", p={"n": 1})))
        newer = (await append(store, "task/1", a.set("n", 2))).update_id
        [frame] = await log(store, draft("task", "1", "u", {"n": 2}, update_id=newer))
        [own] = await log(store, draft("task", "1", "u", {"n": 3, "m": 1}))
        assert (own.sid, own.p) == (frame.sid + 1, {"n": 3, "m": 1})
        assert await log(store, draft("task", "1", "u", {"n": 3})) == []


async def test_a_record_row_is_what_its_frames_say(store: Store) -> None:
    # persistence.framing.fold: p applied to the row, whichever view drafted it.
    with anyio.fail_after(TIMEOUT):
        await log(store, draft("task", "1", "i", {"a": 1, "b": 1}))
        await log(store, draft("task", "1", "u", {"a": 2}, record={"a": 2, "b": 1}))
        # drafted by a node that has not seen a=2 yet: its record says a=1
        await log(store, draft("task", "1", "u", {"b": 5}, record={"a": 1, "b": 5}))
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and record.fields == {"a": 2, "b": 5}


async def test_the_update_id_a_record_row_covers_never_goes_back(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await log(store, draft("task", "1", p={"n": 1}, update_id=100))
        # No update id and no doc: it covers the doc's newest (0), the row keeps 100.
        await log(store, draft("task", "1", "u", {"n": 2}))
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and (record.fields, record.update_id) == ({"n": 2}, 100)
        # From an older view than the row's: stale, the row is left as it is.
        assert await log(store, draft("task", "1", "u", {"n": 3}, update_id=50)) == []
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and (record.fields, record.update_id) == ({"n": 2}, 100)


async def test_only_what_is_new_against_the_record_row_is_logged(store: Store) -> None:
    # persistence.framing.settle, applied by the store in the commit.
    with anyio.fail_after(TIMEOUT):
        await log(store, draft("task", "1", "i", {"a": 1, "b": 2}))
        [frame] = await log(store, draft("task", "1", "i", {"a": 1, "c": 3}))
        assert (frame.op, frame.p) == ("u", {"b": None, "c": 3})  # insert of a stored record
        record = await store.get_record(ORG, "task", "1")
        assert record is not None and record.fields == {"a": 1, "c": 3}
        unchanged = draft("task", "1", "u", {"a": 1}, record={"a": 1, "c": 3})
        assert await log(store, unchanged) == []
        [gone] = await log(store, draft("task", "1", "d"))
        assert gone.op == "d" and await store.get_record(ORG, "task", "1") is None
        # a delete is explicit: logged even for a record never framed
        assert len(await log(store, draft("task", "2", "d"))) == 1
        assert sids(await store.frames_since(ORG, 0)) == [1, 2, 3, 4]


async def test_append_frame_logs_one_frame(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        sid = await store.append_frame(
            ORG,
            t="task",
            id="1",
            op="u",
            p={"a": [1, {"b": None}]},
            who=None,
            at=3,
            ctx={"client_tx_id": "x"},
        )
        assert sid == 1
        assert await store.frames_since(ORG, 0) == [
            Frame(1, ORG, "task", "1", "u", {"a": [1, {"b": None}]}, None, 3, {"client_tx_id": "x"})
        ]
        assert await store.get_record(ORG, "task", "1") is None  # frames only
        assert await store.frames_since(OTHER, 0) == []


# -- reading frames, bounds, trims -------------------------------------------------------


async def test_read_frames_pages_and_filters_with_the_tenant_bounds(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        for i in range(6):
            await add_frame(store, "task" if i % 2 == 0 else "note", str(i))
        page = await store.read_frames(ORG, 2, limit=2)
        assert (sids(page.frames), page.oldest, page.newest) == ([3, 4], 0, 6)
        page = await store.read_frames(ORG, 0, t="note")
        assert (sids(page.frames), page.oldest, page.newest) == ([2, 4, 6], 0, 6)
        assert sids(await store.frames_since(ORG, 1, limit=3, t="task")) == [3, 5]
        page = await store.read_frames(ORG, 6)
        assert (page.frames, page.oldest, page.newest) == ([], 0, 6)
        page = await store.read_frames(OTHER, 0)
        assert (page.frames, page.oldest, page.newest) == ([], 0, 0)


async def test_trim_keeps_the_newest_and_sids_are_never_reused(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        for i in range(5):
            await add_frame(store, id=str(i))
        for i in range(2):
            await add_frame(store, id=str(i), org=OTHER)
        assert await store.frame_bounds(ORG) == (0, 5)
        assert await store.trim_frames(ORG, 2) == 3
        assert await store.frame_bounds(ORG) == (3, 5)
        page = await store.read_frames(ORG, 0)
        assert (sids(page.frames), page.oldest, page.newest) == ([4, 5], 3, 5)
        assert await store.frame_bounds(OTHER) == (0, 2)
        assert await store.trim_frames(ORG, 10) == 0
        assert await store.trim_frames(ORG, 0) == 2
        assert await store.frame_bounds(ORG) == (0, 0)  # an empty log
        assert await add_frame(store) == 6
        [frame] = await log(store, draft("task", "new"))
        assert frame.sid == 7
        assert await store.frame_bounds(ORG) == (5, 7)
        assert sids(await store.frames_since(ORG, 0)) == [6, 7]
        assert await store.frame_bounds(OTHER) == (0, 2)


async def test_record_frames_are_one_records_frames(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await add_frame(store, "task", "1")
        await add_frame(store, "task", "10")
        await add_frame(store, "task", "1", op="d", p={})
        await add_frame(store, "note", "1")
        await add_frame(store, "task", "1", org=OTHER)
        assert sids(await store.record_frames(ORG, "task", "1", 0)) == [1, 3]
        assert sids(await store.record_frames(ORG, "task", "1", 1)) == [3]
        assert await store.record_frames(ORG, "task", "2", 0) == []
        [other] = await store.record_frames(OTHER, "task", "1", 0)
        assert (other.org, other.sid) == (OTHER, 1)


# -- records -----------------------------------------------------------------------------


async def test_record_rows_are_listed_by_type_and_id(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        for t, id in [("task", "2"), ("task", "10"), ("note", "1"), ("task", "1")]:
            await log(store, draft(t, id, p={"title": id}, at=int(id)))
        await log(store, draft("task", "9"), org=OTHER)
        await add_frame(store)  # the newest sid may be a frame without a record row

        rows, newest = await store.list_records(ORG, limit=10)
        assert [(r.t, r.id) for r in rows] == [
            ("note", "1"),
            ("task", "1"),
            ("task", "10"),
            ("task", "2"),
        ]
        assert newest == 5
        note = rows[0]
        assert (note.fields, note.sid, note.update_id, note.updated_at) == ({"title": "1"}, 3, 0, 1)
        rows, _ = await store.list_records(ORG, t="task", limit=2)
        assert [r.id for r in rows] == ["1", "10"]
        rows, _ = await store.list_records(ORG, t="task", after=("task", "10"), limit=2)
        assert [r.id for r in rows] == ["2"]
        rows, _ = await store.list_records(ORG, after=("note", "1"), limit=1)
        assert [(r.t, r.id) for r in rows] == [("task", "1")]
        rows, newest = await store.list_records(OTHER, limit=10)
        assert [(r.t, r.id) for r in rows] == [("task", "9")] and newest == 1
        assert await store.get_record(OTHER, "task", "1") is None
        assert await store.get_record(ORG, "task", "9") is None


async def test_record_writers_names_other_writers_of_each_field(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        me = {"client_id": "c1"}
        await add_frame(store, p={"a": 1, "b": 1}, who="ann", ctx=me)  # 1: mine
        await add_frame(store, p={"a": 2}, who="bob", ctx={"client_id": "c2"})  # 2
        await add_frame(store, p={"b": 2}, who="ann", ctx={"client_id": "c2"})  # 3: my other tab
        await add_frame(store, p={"c": 1}, who=None)  # 4: no who, no client
        await add_frame(store, p={"a": 3, "z": 0}, who="bob")  # 5
        await add_frame(store, op="d", p={}, who="bob")  # 6
        await add_frame(store, id="2", p={"a": 9}, who="carl")  # 7: another record
        await add_frame(store, op="d", p={}, who="ann", ctx=me)  # 8: mine
        await add_frame(store, p={"a": 4}, who="dan", org=OTHER)

        async def writers(since: int, fields: list[str], exclude: Any) -> set[Any]:
            return set(await store.record_writers(ORG, "task", "1", since, fields, exclude=exclude))

        assert await writers(0, ["a", "b", "c"], ("ann", "c1")) == {
            ("a", "bob", 5),
            ("b", "ann", 3),
            ("c", None, 4),
            (None, "bob", 6),
        }
        assert await writers(5, ["a", "b", "c"], ("ann", "c1")) == {(None, "bob", 6)}
        assert await writers(0, ["c"], (None, None)) == {(None, "ann", 8)}
        assert await writers(0, ["b"], ("bob", None)) == {("b", "ann", 3), (None, "ann", 8)}
        assert await writers(8, ["a"], ("ann", "c1")) == set()
        assert await store.record_writers(OTHER, "task", "1", 0, ["a"], exclude=(None, None)) == [
            ("a", "dan", 1)
        ]


async def test_stale_records_are_record_docs_whose_row_lags_the_log(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        for name in ("task/1", "plain", "/x", "x/", "task/a/b"):
            await append(store, name, a.set(name, 1))
        await append(store, "task/1", a.set("o", 1), org=OTHER, frames=batch(draft("task", "1")))
        assert sorted(await store.stale_records()) == [(ORG, "task/1"), (ORG, "task/a/b")]
        assert len(await store.stale_records(limit=1)) == 1
        await log(store, draft("task", "1"))  # covers the doc's newest update
        await log(store, draft("task", "a/b"))
        assert await store.stale_records() == []
        await append(store, "task/1", a.set("n", 2))
        assert await store.stale_records() == [(ORG, "task/1")]


# -- idempotency keys --------------------------------------------------------------------


async def test_idempotency_keys_are_per_org_and_the_first_result_wins(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        assert await store.get_mutation(ORG, "k") is None
        await store.put_mutation(ORG, "k", {"ok": True, "n": [1]})
        await store.put_mutation(ORG, "k", {"ok": False})
        assert await store.get_mutation(ORG, "k") == {"ok": True, "n": [1]}
        assert await store.get_mutation(OTHER, "k") is None
        await store.put_mutation(OTHER, "k", {"other": 1})
        assert await store.get_mutation(OTHER, "k") == {"other": 1}
        assert await store.get_mutation(ORG, "k") == {"ok": True, "n": [1]}


async def test_a_batch_key_remembers_the_sid_of_its_last_logged_frame(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await store.log_frames(
            ORG, batch(draft("task", "1"), draft("task", "2"), mutation=("tx", {"ok": 1}))
        )
        assert await store.get_mutation(ORG, "tx") == {"ok": 1, "sid": 2}
        # (What a second batch with a stored key does is not pinned here yet: the
        # PostgreSQL branch proposes MutationReplayed for it.)
        await store.log_frames(OTHER, batch(mutation=("tx", {"ok": 3})))  # no frames
        assert await store.get_mutation(OTHER, "tx") == {"ok": 3}
        # Every draft stale: the key is stored, with no sid.
        await store.log_frames(
            ORG, batch(draft("task", "1", update_id=0), mutation=("tx-2", {"ok": 4}))
        )
        assert await store.get_mutation(ORG, "tx-2") == {"ok": 4}


# -- commits and cancellation ------------------------------------------------------------


async def test_a_cancelled_awaiter_does_not_cancel_the_commit(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        queued = []

        async def write() -> Committed:
            appended = await store.append(ORG, "doc", Replica(1).set("a", 1), actor="a", at=1)
            queued.append(appended)
            return await appended.durable

        task = asyncio.create_task(write())
        await asyncio.sleep(0)  # the task queued its append and waits for the commit
        assert len(queued) == 1
        durable = queued[0].durable
        assert not durable.done()
        outcomes: list[bool] = []
        durable.add_done_callback(lambda commit: outcomes.append(commit.cancelled()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert durable.cancel() is False
        committed = await durable
        await asyncio.sleep(0)  # done-callbacks are scheduled, not run, on completion
        assert outcomes == [False] and not durable.cancelled()
        stored = await store.load(ORG, "doc")
        assert stored is not None and stored.last_update_id == committed.update_id


@pytest.mark.parametrize("write", ["put_mutation", "delete", "compact", "append_frame"])
async def test_an_awaited_write_commits_though_its_caller_is_cancelled(
    store: Store, write: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        await append(store, "doc", a.set("x", 1))
        calls = {
            "put_mutation": lambda: store.put_mutation(ORG, "k", {"ok": True}),
            "delete": lambda: store.delete(ORG, "doc"),
            "compact": lambda: store.compact(ORG, "doc", a.state()),
            "append_frame": lambda: add_frame(store),
        }
        task = asyncio.create_task(calls[write]())
        await asyncio.sleep(0)  # queued, waiting for its commit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.flush()
        if write == "put_mutation":
            assert await store.get_mutation(ORG, "k") == {"ok": True}
        elif write == "delete":
            assert not await store.has_doc(ORG, "doc")
        elif write == "compact":
            stored = await store.load(ORG, "doc")
            assert stored is not None and stored.snapshot is not None and stored.updates == []
        else:
            assert await store.frame_bounds(ORG) == (0, 1)


async def test_flush_waits_for_everything_queued_before_it(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a = Replica(1)
        appended = [
            await store.append(ORG, "doc", a.set("x", i), actor="a", at=i) for i in range(5)
        ]
        logged = store.log_frames(ORG, batch(draft("task", "1")))
        await store.flush()
        assert all(x.durable.done() for x in appended) and logged.done()
        assert stored_content(await store.load(ORG, "doc")) == {"x": 4}


async def test_writes_of_an_atomic_block_commit_in_one_transaction(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        await store.flush()
        before = store.stats().commits
        with store.atomic():
            first = await store.append(
                ORG, "task/1", Replica(1).set("a", 1), actor="ann", at=1,
                frames=batch(draft("task", "1")),
            )  # fmt: skip
            logged = store.log_frames(ORG, batch(draft("note", "9")))
            second = await store.append(
                ORG, "task/2", Replica(2).set("b", 2), actor="ann", at=2,
                frames=batch(draft("task", "2")),
            )  # fmt: skip
        one = await first.durable
        # One commit completes them all together, in the order queued.
        assert second.durable.done() and logged.done()
        two = second.durable.result()
        sids = [f.sid for f in [*one.frames, *logged.result(), *two.frames]]
        assert sids == list(range(sids[0], sids[0] + 3))
        await store.flush()
        assert store.stats().commits - before <= 2  # the block's commit, and the flush's
        page = await store.read_frames(ORG, 0)
        assert [(f.t, f.id) for f in page.frames] == [("task", "1"), ("note", "9"), ("task", "2")]
