"""Room.change: a server-side change is shared, logged and framed even when it fails."""

from __future__ import annotations

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
        assert appended is not None and await appended.durable == []
        assert listener.changed == [("bob", Origin.MUTATION)], "callers frame a success"
        room.mark_closed()
