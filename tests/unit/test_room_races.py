"""Room lifecycle races: unload against a running compaction, delete against a load or a
lingering client. Each interleaving is forced (a paused store call, a held writer)."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from pycrdt import Map

from crdt_sync.mutations import Mutation
from crdt_sync.settings import Settings, SettingsError
from rooms.close_codes import CloseCode
from rooms.room import Origin, Room, RoomState

from .live_node import ORG, WAIT, fields_update, live_node, stored_fields

pytestmark = pytest.mark.anyio


def fields_of(room: Room) -> dict:
    return room.doc.get("fields", type=Map).to_py()


async def test_unload_waits_for_running_compaction(tmp_path: Path) -> None:
    """A compaction is committing (slowly) when an edit comes and the room unloads: the
    unload must return only once that edit is stored, so a rejoin sees it."""
    async with live_node(tmp_path) as node:
        room = await node.manager.get_room(ORG, "note")
        first = await room.apply_update(
            fields_update(room, text="hello"), actor="ann", origin=Origin.HTTP
        )
        assert first is not None
        await first.durable
        release = threading.Event()
        seen: dict[str, object] = {}

        async def unload_then_rejoin() -> None:
            assert await node.manager.unload(room)
            seen["edit stored"] = last.durable.done()  # type: ignore[attr-defined]
            rejoined = await node.manager.get_room(ORG, "note")
            seen["rejoined"] = fields_of(rejoined)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                await tg.start(node.store.hold_writer, release)
                tg.start_soon(room.compact)  # its commit waits behind the held writer
                await wait_all_tasks_blocked()
                assert room.compacting
                last = await room.apply_update(
                    fields_update(room, text="hello world!"), actor="ann", origin=Origin.HTTP
                )
                tg.start_soon(unload_then_rejoin)
                await wait_all_tasks_blocked()
                release.set()

        assert seen["edit stored"], "unload returned before the edit was committed"
        assert seen["rejoined"] == {"text": "hello world!"}
        rejoined = node.manager.rooms[(ORG, "note")]
        await rejoined.compact(force=True)  # the next compaction keeps it too
        assert stored_fields(await node.store.load(ORG, "note")) == {"text": "hello world!"}


async def test_delete_during_load_keeps_one_room(tmp_path: Path) -> None:
    """A delete comes while a joiner's load has read the doc: the joiner must end up in
    the one room of the doc, which holds nothing of the deleted state."""
    key = (ORG, "task/1")
    async with live_node(tmp_path) as node:
        made = await node.feed.mutations.mutate_many(
            ORG, [Mutation("task", "1", "i", {"title": "old"})], actor="ann", client_id=None
        )
        assert isinstance(made[0], dict) and made[0]["status"] == 201
        assert await node.manager.unload(node.manager.rooms[key])
        paused = node.store.pause("load")
        first = node.connection()
        joined: dict[str, Room] = {}
        deleted: list[int | None] = []

        async def join() -> None:
            joined["first"] = await node.manager.join(*key, first)

        async def delete() -> None:
            deleted.append(await node.feed.mutations.delete(*key, actor="carol"))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(join)
                await paused.wait_reached()  # the load has read "old"
                tg.start_soon(delete)
                await wait_all_tasks_blocked()
                paused.go()
            later = node.connection()
            joined["later"] = await node.manager.join(*key, later)

        assert deleted[0] is not None
        room = node.manager.rooms[key]
        assert room.state is RoomState.LOADED
        # The first joiner is either told its doc is gone (it joined before the delete)
        # or is in the one room of the doc; never open in a room of the deleted doc.
        if first.closing:
            assert first.close_code == CloseCode.NOT_FOUND
            assert joined["first"].state is RoomState.CLOSED
        else:
            assert joined["first"] is room and first.id in room.connections
        assert joined["later"] is room and not later.closing
        assert fields_of(room) == {}, "the deleted state is not served"
        await room.on_update(later, fields_update(room, title="new"), None)
        await node.store.flush()
        assert stored_fields(await node.store.load(*key)) == {"title": "new"}
        frames = (await node.store.read_frames(ORG, 0)).frames
        assert [f.op for f in frames] == ["i", "d"]


def test_room_idle_seconds_zero_is_refused() -> None:
    """0 would unload a room between two requests of one client (churn, and races)."""
    with pytest.raises(SettingsError, match=r"--room-idle-seconds must be >= 0\.1"):
        Settings(room_idle_seconds=0)
    assert Settings(room_idle_seconds=0.1).room_idle_seconds == 0.1


async def test_a_failing_unload_settles_the_room_and_the_doc_opens_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails inside an unload (the feed's last frame, the snapshot), the room is
    settled: either unloaded with its state stored, or LOADED again; never CLOSING for
    ever, with every later join of the doc waiting on it."""
    async with live_node(tmp_path) as node:
        room = await node.manager.get_room(ORG, "task/1")
        done = await room.apply_update(
            fields_update(room, title="kept"), actor="ann", origin=Origin.HTTP
        )
        assert done is not None

        async def listener_fails(room: Room) -> None:
            raise ValueError("a frame that cannot be drafted")

        monkeypatch.setattr(node.feed, "room_unloading", listener_fails)
        assert await node.manager.unload(room) is True  # the doc is stored all the same
        assert stored_fields(await node.store.load(ORG, "task/1")) == {"title": "kept"}
        monkeypatch.undo()

        room = await node.manager.get_room(ORG, "task/1")

        async def snapshot_fails(*, force: bool = False) -> None:
            raise RuntimeError("a bug in compaction")

        monkeypatch.setattr(room, "compact", snapshot_fails)
        assert await node.manager.unload(room) is False
        assert room.state is RoomState.LOADED and room.unload_settled.is_set()
        monkeypatch.undo()
        with anyio.fail_after(WAIT):
            again = await node.manager.get_room(ORG, "task/1")
        assert again is room and fields_of(again) == {"title": "kept"}
        assert node.manager.supervisor.failures["unload"] == 2


async def test_an_editor_closed_while_its_update_waits_for_the_store_loses_nothing(
    tmp_path: Path,
) -> None:
    """The writer queue is full, so an editor's update waits for room; the editor's
    connection closes (its reader is cancelled) meanwhile. The update is in the doc and
    relayed: it must still be logged and counted, so that the unload waits for it."""
    async with live_node(tmp_path) as node:
        room = await node.manager.get_room(ORG, "note")
        first = await room.apply_update(
            fields_update(room, text="hello"), actor="ann", origin=Origin.HTTP
        )
        assert first is not None
        await first.durable
        await room.compact()  # nothing logged since the snapshot
        assert room.logged_since_snapshot == 0
        conn = node.connection("bob")
        room.join(conn)
        release = threading.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(node.store.hold_writer, release)
            blocker = await room.apply_update(
                fields_update(room, text="hello w"), actor="ann", origin=Origin.HTTP
            )
            assert blocker is not None  # queued, not committed: the writer is held
            node.store._writer.max_queued_bytes = 1  # so the next writer waits for room
            with anyio.CancelScope() as reading:
                tg.start_soon(_cancel_when_blocked, reading, release)
                await room.on_update(conn, fields_update(room, text="hello world"), None)
        node.manager.leave(room, conn)
        assert room.logged_since_snapshot == 2
        with anyio.fail_after(WAIT):
            assert await node.manager.unload(room) is True
        stored = stored_fields(await node.store.load(ORG, "note"))
        assert stored == {"text": "hello world"}


async def _cancel_when_blocked(scope: anyio.CancelScope, release: threading.Event) -> None:
    """Cancel the reader once it waits for the store, then let the writer go on."""
    await wait_all_tasks_blocked()
    scope.cancel()
    await wait_all_tasks_blocked()
    release.set()


async def test_max_rooms_skips_an_idle_room_being_deleted_and_unloads_the_next(
    tmp_path: Path,
) -> None:
    """At --max-rooms, the oldest idle room is being deleted (its unload must not store
    it): the next idle room is unloaded instead of the join being refused."""
    from persistence.sqlite import SQLiteStore
    from rooms.manager import RoomManager, RoomSettings

    async with SQLiteStore(tmp_path / "db") as store:
        settings = RoomSettings(idle_seconds=60, max_rooms=2)
        async with RoomManager(store, settings) as manager:
            old = await manager.get_room(ORG, "old")
            await old.apply_update(fields_update(old, n=1), actor="a", origin=Origin.HTTP)
            newer = await manager.get_room(ORG, "newer")
            await newer.apply_update(fields_update(newer, n=2), actor="a", origin=Origin.HTTP)
            old.last_activity = 0.0  # the oldest idle room
            async with manager.deleting(ORG, "old"):
                with anyio.fail_after(WAIT):
                    third = await manager.get_room(ORG, "third")
                assert third.state is RoomState.LOADED
                assert (ORG, "newer") not in manager.rooms, "the next idle room made room"
                assert (ORG, "old") in manager.rooms
                manager.delete_room(ORG, "old")
                await store.delete(ORG, "old")
