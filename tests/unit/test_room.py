"""Room.change: a server-side change is shared, logged and framed even when it fails;
the room learns its update ids from the store's commits."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from pycrdt import Doc, Map

from persistence.sqlite import SQLiteStore
from rooms.room import Origin, Room

pytestmark = pytest.mark.anyio


class Listener:
    def __init__(self) -> None:
        self.changed: list[tuple[str, Origin]] = []

    async def room_loaded(self, room: Room) -> None: ...

    def room_changed(self, room: Room, actor: str, origin: Origin) -> None:
        self.changed.append((actor, origin))

    def room_awareness(self, room: Room) -> None: ...

    async def room_unloading(self, room: Room) -> None: ...

    def room_unloaded(self, room: Room) -> None: ...


async def test_a_change_that_fails_half_way_is_still_logged_and_reported(tmp_path) -> None:
    listener = Listener()
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "task/1", store, listener=listener)
        await room.load()

        def half_then_fail(doc: Doc) -> None:
            doc.get("fields", type=Map)["status"] = "open"
            raise ValueError("second half failed")

        with pytest.raises(ValueError, match="second half"):
            await room.change(half_then_fail, actor="bob")
        await store.flush()
        stored = await store.load("default", "task/1")
        assert stored is not None and len(stored.updates) == 1
        copy = Doc()
        copy.apply_update(stored.updates[0])
        assert copy.get("fields", type=Map).to_py() == {"status": "open"}
        assert listener.changed == [("bob", Origin.MUTATION)]

        assert await room.change(lambda doc: None, actor="bob") is None  # nothing changed
        appended = await room.change(
            lambda doc: doc.get("fields", type=Map).update({"status": "done"}), actor="bob"
        )
        assert appended is not None
        committed = await appended.durable
        assert committed.frames == [] and committed.prev_update_id == 1
        assert room.last_update_id == committed.update_id == 2  # learnt from the commit
        assert listener.changed == [("bob", Origin.MUTATION)], "callers frame a success"
        room.mark_closed()


async def test_a_room_learns_its_update_ids_from_the_commits(tmp_path) -> None:
    """Ids are the store's, assigned at commit: a queued append has none yet, but the
    room is not empty any more; once committed the room knows the id."""
    release, holding = threading.Event(), threading.Event()

    def hold(conn: object) -> None:
        holding.set()
        release.wait(10)

    def update(value: str) -> bytes:
        replica = Doc()
        replica.apply_update(room.doc.get_update())
        before = replica.get_state()
        replica.get("fields", type=Map)["status"] = value
        return replica.get_update(before)

    with anyio.fail_after(10):
        async with SQLiteStore(tmp_path / "db") as store:
            room = Room("default", "task/1", store)
            await room.load()
            assert room.is_empty
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.run_in_writer, hold)
                assert await anyio.to_thread.run_sync(holding.wait, 10)
                appended = await room.apply_update(update("a"), actor="a", origin=Origin.HTTP)
                assert appended is not None
                assert room.last_update_id == 0  # not committed: no id yet
                assert not room.is_empty  # but it is on its way to the store
                release.set()
            committed = await appended.durable
            # The room's callback was scheduled when the commit settled, before any awaiter
            # of it; but a commit that settled before the await does not yield here.
            await anyio.lowlevel.checkpoint()
            assert room.last_update_id == committed.update_id == 1
            await room.compact()  # no ids passed: covers what was appended before it
            assert room.logged_since_snapshot == 0
            again = await room.apply_update(update("b"), actor="a", origin=Origin.HTTP)
            assert again is not None
            assert (await again.durable).prev_update_id == 1  # the chain survives compaction
            stored = await store.load("default", "task/1")
            assert stored is not None and stored.last_update_id == 2
            room.mark_closed()
