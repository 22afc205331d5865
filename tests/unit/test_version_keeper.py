"""The version keeper (crdt_sync/versions.py): which changes it counts, when it takes
a version, whom it credits, and that retention runs after each version."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text

from crdt_sync.version_retention import RetentionPolicy
from crdt_sync.versions import VersionKeeper
from persistence.memory import MemoryStore
from persistence.store import StoreWriteError, VersionInfo
from rooms.room import Origin, Room
from rooms.supervisor import Supervisor

pytestmark = pytest.mark.anyio

TIMEOUT = 10
ORG, NAME = "acme", "notes/1"


class Manager:
    """What the keeper's loop needs of the room manager."""

    def __init__(self) -> None:
        self.rooms: dict[tuple[str, str], Room] = {}
        self.supervisor = Supervisor()


class Editor:
    """Makes updates of a doc with a text, one per call."""

    def __init__(self) -> None:
        self.doc = Doc()
        self.text = self.doc.get("body", type=Text)

    def type(self, chars: str) -> bytes:
        before = self.doc.get_state()
        self.text += chars
        return self.doc.get_update(before)


@asynccontextmanager
async def keeper_running(
    store: MemoryStore, **options: Any
) -> AsyncIterator[tuple[VersionKeeper, Room]]:
    keeper = VersionKeeper(store, **options)
    manager = Manager()
    room = Room(ORG, NAME, store, listener=keeper)
    await room.load()
    manager.rooms[(ORG, NAME)] = room
    async with anyio.create_task_group() as tg:
        await tg.start(keeper.run, manager)
        yield keeper, room
        tg.cancel_scope.cancel()


async def wait_versions(store: MemoryStore, count: int) -> list[VersionInfo]:
    with anyio.fail_after(TIMEOUT):
        while len(found := await store.list_versions(ORG, NAME)) < count:
            await anyio.sleep(0.01)
    return found


async def test_a_version_after_every_n_own_changes_credits_their_actors() -> None:
    async with (
        MemoryStore() as store,
        keeper_running(store, every_updates=3, idle_seconds=0) as (
            keeper,
            room,
        ),
    ):
        ed = Editor()
        for actor, chars in (("ann", "a"), ("bob", "b"), ("ann", "c")):
            await room.apply_update(ed.type(chars), actor=actor, origin=Origin.HTTP)
        (version,) = await wait_versions(store, 1)
        assert version.authors == ("ann", "bob") and version.label is None
        assert not keeper.has_changes(room)
        got = await store.get_version(ORG, NAME, version.version)
        assert got is not None
        copy = Doc()
        copy.apply_update(got[1])
        assert str(copy.get("body", type=Text)) == "abc"
        assert keeper.auto_taken == 1


async def test_changes_from_other_nodes_and_the_store_are_not_counted() -> None:
    async with (
        MemoryStore() as store,
        keeper_running(store, every_updates=2, idle_seconds=0) as (
            keeper,
            room,
        ),
    ):
        ed = Editor()
        await room.apply_update(ed.type("x"), actor="ann", origin=Origin.HTTP)  # stored
        for chars in "remote":  # another node committed these: that node versions them
            room.apply_remote(ed.type(chars), actor="zed")
        assert keeper.authors_of(room) == ["ann"]  # one own change: below the trigger
        assert await store.list_versions(ORG, NAME) == []
        await room.apply_update(ed.type("y"), actor="bob", origin=Origin.CLIENT)
        (version,) = await wait_versions(store, 1)
        assert version.authors == ("ann", "bob")


async def test_a_mutation_noted_by_the_engine_counts() -> None:
    async with (
        MemoryStore() as store,
        keeper_running(store, every_updates=1, idle_seconds=0) as (
            keeper,
            room,
        ),
    ):
        await room.apply_update(Editor().type("x"), actor="ann", origin=Origin.STORE)
        assert not keeper.has_changes(room)
        await room.change(lambda doc: doc.get("body", type=Text).insert(0, "m"), actor="mo")
        keeper.noted(room, "mo")  # what MutationEngine.on_change does
        (version,) = await wait_versions(store, 1)
        assert version.authors == ("mo",)


async def test_a_version_once_the_doc_is_quiet() -> None:
    async with (
        MemoryStore() as store,
        keeper_running(store, every_updates=0, idle_seconds=0.2) as (
            keeper,
            room,
        ),
    ):
        ed = Editor()
        await room.apply_update(ed.type("quiet"), actor="ann", origin=Origin.HTTP)
        (version,) = await wait_versions(store, 1)
        assert version.authors == ("ann",)
        assert not keeper.has_changes(room)  # nothing left to version


async def test_auto_off_takes_none_but_on_demand_still_credits_authors() -> None:
    async with (
        MemoryStore() as store,
        keeper_running(store, auto=False, every_updates=1) as (
            keeper,
            room,
        ),
    ):
        ed = Editor()
        await room.apply_update(ed.type("a"), actor="ann", origin=Origin.HTTP)
        assert not keeper.auto
        await keeper.room_unloading(room)
        assert await store.list_versions(ORG, NAME) == []
        info = await keeper.take(room, label="mine")
        assert info is not None and info.authors == ("ann",) and info.label == "mine"


async def test_unloading_a_changed_room_versions_it() -> None:
    async with (
        MemoryStore() as store,
        keeper_running(store, every_updates=100, idle_seconds=0) as (
            _,
            room,
        ),
    ):
        await room.apply_update(Editor().type("bye"), actor="ann", origin=Origin.HTTP)
        keeper = room._listener
        assert isinstance(keeper, VersionKeeper)
        await keeper.room_unloading(room)
        (version,) = await store.list_versions(ORG, NAME)
        assert version.authors == ("ann",)


class FailingOnce(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    async def put_version(self, org: str, name: str, state: bytes, **kw: Any) -> VersionInfo | None:
        if self.fail:
            self.fail = False
            raise StoreWriteError("disk full")
        return await super().put_version(org, name, state, **kw)


async def test_a_failed_version_keeps_its_authors_for_the_next() -> None:
    async with FailingOnce() as store, keeper_running(store, auto=False) as (keeper, room):
        ed = Editor()
        await room.apply_update(ed.type("a"), actor="ann", origin=Origin.HTTP)
        with pytest.raises(StoreWriteError):
            await keeper.take(room)
        await room.apply_update(ed.type("b"), actor="bob", origin=Origin.HTTP)
        info = await keeper.take(room)
        assert info is not None and info.authors == ("ann", "bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


async def test_retention_runs_after_each_version() -> None:
    clock = Clock()
    policy = RetentionPolicy(max_bytes_ratio=3, min_budget_bytes=0)
    async with (
        MemoryStore() as store,
        keeper_running(store, auto=False, policy=policy, clock=clock) as (keeper, room),
    ):
        ed = Editor()
        await room.apply_update(ed.type("x"), actor="ann", origin=Origin.HTTP)
        made: list[int] = []
        for i in range(6):
            clock.now += 1000
            info = await keeper.take(room, label="keep" if i == 0 else None)
            assert info is not None
            made.append(info.version)
        kept = [v.version for v in await store.list_versions(ORG, NAME)]
        # all the same size: three fit the budget; the oldest unlabeled went first
        assert kept == [made[5], made[4], made[0]]
        assert keeper.dropped == 3
