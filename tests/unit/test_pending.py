"""Updates with missing dependencies: what a room holds for them is counted and bounded.

Real rooms on a real SQLite store, real connections over an in-memory socket; the
updates are made by real pycrdt docs, delivered out of order.
"""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text

from persistence.sqlite import SQLiteStore
from rooms.close_codes import CloseCode
from rooms.codec import encode_sync_step1
from rooms.connection import Connection
from rooms.limits import LimitExceeded
from rooms.pending import missing_part
from rooms.room import MAX_PENDING_UPDATES, Room

from .live_node import RecordingTransport

pytestmark = pytest.mark.anyio


MemorySocket = RecordingTransport


def edits(count: int, size: int) -> list[bytes]:
    """``count`` updates of one editor, each depending on the one before."""
    doc = Doc()
    text = doc.get("body", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        text += f"{i}:" + "x" * size
    return updates


def test_missing_part_is_none_once_integrated_and_the_rest_while_pending() -> None:
    first, second, third = edits(3, 100)
    doc = Doc()
    doc.apply_update(third)
    missing = missing_part(third, doc.get_state())
    assert missing is not None and len(missing) >= 100
    doc.apply_update(first)
    assert missing_part(first, doc.get_state()) is None
    doc.apply_update(second)
    assert missing_part(third, doc.get_state()) is None, "resolved once its deps came"
    assert missing_part(first, doc.get_state()) is None, "a duplicate is not pending"


async def test_pending_bytes_are_counted_then_released_when_dependencies_arrive(
    tmp_path,
) -> None:
    first, second, third = edits(3, 1000)
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "doc", store, max_pending_bytes=10_000)
        await room.load()
        conn = Connection(MemorySocket())
        room.join(conn)
        await room.on_update(conn, third, None)
        assert room.pending_bytes >= 1000
        await room.on_update(conn, first, None)
        assert room.pending_bytes >= 1000, "third still lacks second"
        await room.on_update(conn, second, None)
        assert room.pending_bytes == 0
        assert str(room.doc.get("body", type=Text)).startswith("0:")
        room.mark_closed()


async def test_room_past_max_pending_bytes_drops_them_and_closes_the_sender_only(
    tmp_path,
) -> None:
    updates = edits(30, 1000)
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "doc", store, max_pending_bytes=10_000)
        await room.load()
        editor, attacker = Connection(MemorySocket()), Connection(MemorySocket())
        room.join(editor)
        room.join(attacker)
        mine = Doc()
        mine.get("body", type=Text).insert(0, "kept")
        await room.on_update(editor, mine.get_update(), None)
        with pytest.raises(LimitExceeded) as caught:
            # Never the first: all of them wait for it, forever.
            for update in updates[1:]:
                await room.on_update(attacker, update, None)
        assert caught.value.code == CloseCode.PENDING_TOO_LARGE
        assert room.pending_bytes == 0
        assert str(room.doc.get("body", type=Text)) == "kept", "integrated state is intact"
        # The rebuilt doc holds nothing pending: the first update integrates only itself.
        await room.on_update(editor, updates[0], None)
        assert str(room.doc.get("body", type=Text)).count("x") == 1000
        assert room.pending_bytes == 0
        assert not editor.closing
        room.mark_closed()


async def test_the_connection_holding_most_pending_bytes_is_the_one_closed(tmp_path) -> None:
    big = edits(10, 1000)
    small = edits(3, 10)
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "doc", store, max_pending_bytes=1_000_000)
        await room.load()
        hog, bystander = Connection(MemorySocket()), Connection(MemorySocket())
        room.join(hog)
        room.join(bystander)
        for update in big[1:]:
            await room.on_update(hog, update, None)
        room.max_pending_bytes = room.pending_bytes + 5  # the hog is right at the edge
        # The bystander's small pending update tips it over: the hog is closed.
        await room.on_update(bystander, small[2], None)
        assert hog.closing and hog.close_code == CloseCode.PENDING_TOO_LARGE
        assert not bystander.closing
        assert room.pending_bytes == 0
        room.mark_closed()


async def test_many_small_pending_updates_are_bounded_by_count_too(tmp_path) -> None:
    """Tiny updates far below --max-pending-bytes still cost yrs CPU on every apply:
    past MAX_PENDING_UPDATES of them the pending state is dropped as well."""
    updates = edits(MAX_PENDING_UPDATES + 10, 1)
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "doc", store, max_pending_bytes=100_000_000)
        await room.load()
        attacker = Connection(MemorySocket())
        room.join(attacker)
        with pytest.raises(LimitExceeded) as caught:
            for update in updates[1:]:  # never the first: all wait for it
                await room.on_update(attacker, update, None)
        assert caught.value.code == CloseCode.PENDING_TOO_LARGE
        assert room.pending_bytes == 0
        room.mark_closed()


async def test_a_bystander_whose_pending_update_was_dropped_is_asked_to_resync(
    tmp_path,
) -> None:
    big = edits(10, 1000)
    small = edits(3, 10)
    async with SQLiteStore(tmp_path / "db") as store:
        room = Room("default", "doc", store, max_pending_bytes=1_000_000)
        await room.load()
        seen = MemorySocket()
        hog, bystander = Connection(MemorySocket()), Connection(seen)
        room.join(hog)
        room.join(bystander)
        await room.on_update(bystander, small[2], None)  # waits for small[0], small[1]
        for update in big[1:]:
            await room.on_update(hog, update, None)
        before = len(seen.sent)
        room.max_pending_bytes = room.pending_bytes - 1
        await room.on_update(bystander, small[1], None)  # tips it over: the hog is closed
        assert hog.closing and not bystander.closing
        step1 = encode_sync_step1(room.doc.get_state())
        assert step1 in seen.sent[before:], "asked to send its updates again"
        room.mark_closed()
