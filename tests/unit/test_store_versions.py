"""Document versions in the store contract (crdt-sync issue 15, item 4), on every backend.

Each test runs against ``memory``, ``sqlite`` and ``postgres`` (tests/store_backends.py)
through the public contract only.
"""

from __future__ import annotations

import anyio
import pytest
from pycrdt import Doc, Text, get_state

from persistence.store import Store, StoreClosedError, VersionInfo
from persistence.versions import MAX_AUTHORS, MAX_LABEL_CHARS
from tests.unit.test_store_contract import batch, draft

pytestmark = pytest.mark.anyio

TIMEOUT = 10
ORG = "acme"
OTHER = "globex"


class Editor:
    """A doc with a text, whose every edit is appended to the store."""

    def __init__(self, store: Store, name: str, org: str = ORG) -> None:
        self.store, self.name, self.org = store, name, org
        self.doc = Doc()
        self.text = self.doc.get("body", type=Text)

    async def type(self, chars: str) -> None:
        before = self.doc.get_state()
        self.text += chars
        appended = await self.store.append(
            self.org, self.name, self.doc.get_update(before), actor="ann", at=1
        )
        await appended.durable

    def state(self) -> bytes:
        return self.doc.get_update()


def text_of(state: bytes) -> str:
    doc = Doc()
    doc.apply_update(state)
    return str(doc.get("body", type=Text))


async def test_a_version_keeps_the_state_and_its_info(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed = Editor(store, "notes/1")
        await ed.type("hello")
        state = ed.state()
        info = await store.put_version(
            ORG, "notes/1", state, authors=["ann", "bob"], label="first", at=1234
        )
        assert isinstance(info, VersionInfo)
        assert info.name == "notes/1" and info.created_at == 1234
        assert info.authors == ("ann", "bob") and info.label == "first"
        assert info.size == len(state) and info.state_vector == get_state(state)
        await ed.type(" world")  # later edits do not change the version
        got = await store.get_version(ORG, "notes/1", info.version)
        assert got is not None
        assert got[0] == info and got[1] == state and text_of(got[1]) == "hello"


async def test_ids_increase_are_never_reused_and_list_newest_first(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed = Editor(store, "doc")
        other = Editor(store, "other")
        await other.type("x")
        ids = []
        for i in range(5):
            await ed.type(str(i))
            info = await store.put_version(ORG, "doc", ed.state(), authors=[], label=None, at=i)
            assert info is not None
            ids.append(info.version)
            o = await store.put_version(ORG, "other", other.state(), authors=[], label=None, at=i)
            assert o is not None and o.version > info.version
        assert ids == sorted(ids) and len(set(ids)) == 5
        listed = await store.list_versions(ORG, "doc")
        assert [v.version for v in listed] == ids[::-1]
        assert [v.label for v in listed] == [None] * 5
        page = await store.list_versions(ORG, "doc", limit=2)
        assert [v.version for v in page] == [ids[4], ids[3]]
        rest = await store.list_versions(ORG, "doc", before=page[-1].version, limit=10)
        assert [v.version for v in rest] == [ids[2], ids[1], ids[0]]
        # deleting the newest does not make its id come back
        assert await store.delete_versions(ORG, "doc", [ids[4], ids[3], 10**12]) == 2
        assert await store.get_version(ORG, "doc", ids[4]) is None
        again = await store.put_version(ORG, "doc", ed.state(), authors=[], label=None, at=9)
        assert again is not None and again.version > o.version
        assert [v.version for v in await store.list_versions(ORG, "doc")] == [
            again.version,
            ids[2],
            ids[1],
            ids[0],
        ]


async def test_no_version_of_a_doc_that_is_not_stored(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed = Editor(store, "doc")
        await ed.type("a")
        assert (
            await store.put_version(ORG, "nope", ed.state(), authors=[], label=None, at=1) is None
        )
        # another tenant's doc of the same name is not this one
        assert (
            await store.put_version(OTHER, "doc", ed.state(), authors=[], label=None, at=1) is None
        )
        assert await store.list_versions(ORG, "nope") == []


async def test_versions_are_per_doc_and_per_tenant(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        a, b = Editor(store, "doc"), Editor(store, "doc", org=OTHER)
        await a.type("acme")
        await b.type("globex")
        va = await store.put_version(ORG, "doc", a.state(), authors=["ann"], label=None, at=1)
        vb = await store.put_version(OTHER, "doc", b.state(), authors=["gus"], label=None, at=1)
        assert va is not None and vb is not None
        assert [v.version for v in await store.list_versions(ORG, "doc")] == [va.version]
        assert [v.version for v in await store.list_versions(OTHER, "doc")] == [vb.version]
        assert await store.get_version(ORG, "doc", vb.version) is None
        assert await store.get_version(ORG, "other", va.version) is None
        assert await store.delete_versions(ORG, "doc", [vb.version]) == 0
        assert await store.get_version(OTHER, "doc", vb.version) is not None


async def test_deleting_a_doc_deletes_its_versions(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed, keep = Editor(store, "doc"), Editor(store, "keep")
        await ed.type("a")
        await keep.type("k")
        v = await store.put_version(ORG, "doc", ed.state(), authors=[], label="x", at=1)
        k = await store.put_version(ORG, "keep", keep.state(), authors=[], label=None, at=1)
        assert v is not None and k is not None
        assert await store.delete(ORG, "doc") is True
        assert await store.list_versions(ORG, "doc") == []
        assert await store.get_version(ORG, "doc", v.version) is None
        assert await store.put_version(ORG, "doc", ed.state(), authors=[], label=None, at=2) is None
        # a doc created again under the name starts without versions
        again = Editor(store, "doc")
        await again.type("new")
        assert await store.list_versions(ORG, "doc") == []
        assert await store.get_version(ORG, "keep", k.version) is not None


async def test_a_record_deleted_by_its_d_frame_loses_its_versions(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed = Editor(store, "task/1")
        await ed.type("a")
        v = await store.put_version(ORG, "task/1", ed.state(), authors=[], label=None, at=1)
        assert v is not None
        await store.log_frames(ORG, batch(draft("task", "1", "d")), delete="task/1")
        assert await store.list_versions(ORG, "task/1") == []


async def test_a_version_is_behind_the_appends_queued_before_it(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        doc = Doc()
        text = doc.get("body", type=Text)
        text += "queued"
        # not awaited: the doc exists only once this append commits
        appended = await store.append(ORG, "fresh", doc.get_update(), actor="ann", at=1)
        info = await store.put_version(ORG, "fresh", doc.get_update(), authors=[], label=None, at=1)
        assert appended.durable.done()
        assert info is not None


async def test_bad_arguments_are_refused_before_anything_is_queued(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed = Editor(store, "doc")
        await ed.type("a")
        state = ed.state()
        with pytest.raises(ValueError):
            await store.put_version(ORG, "doc", b"\xff\xff\xff", authors=[], label=None, at=1)
        with pytest.raises(ValueError):
            await store.put_version(
                ORG, "doc", state, authors=[], label="x" * (MAX_LABEL_CHARS + 1), at=1
            )
        with pytest.raises(ValueError):
            authors = [f"a{i}" for i in range(MAX_AUTHORS + 1)]
            await store.put_version(ORG, "doc", state, authors=authors, label=None, at=1)
        with pytest.raises(TypeError):
            await store.put_version(ORG, "doc", state, authors="ann", label=None, at=1)
        with pytest.raises(ValueError):
            await store.list_versions(ORG, "doc", limit=0)
        assert await store.list_versions(ORG, "doc") == []
        assert await store.get_version(ORG, "doc", -1) is None
        assert await store.get_version(ORG, "doc", 2**70) is None
        assert await store.list_versions(ORG, "doc", before=2**70) == []
        label = "ü" * MAX_LABEL_CHARS
        info = await store.put_version(ORG, "doc", state, authors=["é"], label=label, at=1)
        assert info is not None
        got = await store.get_version(ORG, "doc", info.version)
        assert got is not None and got[0].label == label and got[0].authors == ("é",)


async def test_versions_refuse_a_closed_store(store: Store) -> None:
    with anyio.fail_after(TIMEOUT):
        ed = Editor(store, "doc")
        await ed.type("a")
        await store.close()
        calls = [
            lambda: store.put_version(ORG, "doc", ed.state(), authors=[], label=None, at=1),
            lambda: store.list_versions(ORG, "doc"),
            lambda: store.get_version(ORG, "doc", 1),
            lambda: store.delete_versions(ORG, "doc", [1]),
        ]
        for call in calls:
            with pytest.raises(StoreClosedError):
                await call()
