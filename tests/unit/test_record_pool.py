"""crdt_sync.client.record_pool: the FrameClient's confirmed and optimistic layers."""

from __future__ import annotations

from crdt_sync.client.offline_queue import QueuedMutation
from crdt_sync.client.record_pool import RecordPool, apply_fields


def frame(sid: int, op: str, p: dict, t: str = "task", id: str = "a") -> dict:
    return {"sid": sid, "t": t, "id": id, "op": op, "p": p, "who": "w", "at": 0, "ctx": {}}


def test_apply_fields_follows_frame_semantics() -> None:
    assert apply_fields(None, "i", {"a": 1, "b": None}) == {"a": 1}
    assert apply_fields({"a": 1, "b": 2}, "u", {"b": None, "c": [1]}) == {"a": 1, "c": [1]}
    assert apply_fields({"a": 1}, "d", {}) is None
    assert apply_fields(None, "u", {"a": 1}) is None


def test_frames_apply_once_in_order_and_the_cursor_moves() -> None:
    pool = RecordPool()
    pool.load([{"t": "task", "id": "a", "fields": {"n": 0}, "sid": 3}], cursor=3)
    fresh = pool.apply([frame(2, "u", {"n": -1}), frame(4, "u", {"n": 4}), frame(4, "u", {})])
    assert [f["sid"] for f in fresh] == [4]
    assert pool.get("task", "a") == {"n": 4} and pool.cursor == 4
    pool.apply([frame(5, "d", {})])
    assert pool.get("task", "a") is None and pool.records() == {}


def test_a_record_loaded_at_a_newer_sid_skips_older_replayed_frames() -> None:
    """Records pages are read one after the other: a later page may already hold what
    a frame after the first page's sid says."""
    pool = RecordPool()
    pool.load([{"t": "task", "id": "a", "fields": {"n": 9}, "sid": 9}], cursor=5)
    fresh = pool.apply([frame(7, "u", {"n": 7}), frame(10, "u", {"m": 1})])
    assert [f["sid"] for f in fresh] == [7, 10]  # both are news to a subscriber
    assert pool.get("task", "a") == {"n": 9, "m": 1}  # the pool kept the newer state


def test_types_filter_frames_but_the_cursor_passes_them() -> None:
    pool = RecordPool(types=["task"])
    pool.load([{"t": "note", "id": "x", "fields": {"a": 1}, "sid": 1}], cursor=1)
    assert pool.records() == {}
    fresh = pool.apply([frame(2, "i", {"a": 1}, t="note"), frame(3, "i", {"a": 2})])
    assert [f["sid"] for f in fresh] == [3] and pool.cursor == 3


def test_local_changes_show_until_their_frame_is_applied() -> None:
    pool = RecordPool()
    pool.load([{"t": "task", "id": "a", "fields": {"title": "old", "n": 1}, "sid": 1}], 1)
    pool.add(QueuedMutation("tx1", "task", "a", "u", {"title": "mine"}, base_sid=1))
    assert pool.get("task", "a") == {"title": "mine", "n": 1}
    # Another writer's frame arrives first: the local change still shows over it.
    pool.apply([frame(2, "u", {"title": "theirs", "n": 2})])
    assert pool.get("task", "a") == {"title": "mine", "n": 2}
    pool.acknowledged("tx1", 3)
    assert pool.get("task", "a") == {"title": "mine", "n": 2}  # its frame is not here yet
    pool.apply([frame(3, "u", {"title": "mine"})])
    assert pool.pending == [] and pool.get("task", "a") == {"title": "mine", "n": 2}


def test_a_refused_change_lets_the_confirmed_record_show_again() -> None:
    pool = RecordPool()
    pool.load([], 0)
    pool.add(QueuedMutation("tx1", "task", "new", "i", {"title": "x"}))
    pool.add(QueuedMutation("tx2", "task", "new", "u", {"n": 1}))
    assert pool.records() == {("task", "new"): {"title": "x", "n": 1}}
    pool.discard("tx1")
    assert pool.records() == {}  # an update of a record that does not exist shows nothing
    pool.acknowledged("tx2", None)  # answered without a change: gone at once
    assert pool.pending == []


def test_clear_keeps_unanswered_changes_only() -> None:
    pool = RecordPool()
    pool.load([{"t": "task", "id": "a", "fields": {"n": 1}, "sid": 1}], 1)
    pool.add(QueuedMutation("answered", "task", "a", "u", {"n": 2}))
    pool.add(QueuedMutation("queued", "task", "b", "i", {"n": 3}))
    pool.acknowledged("answered", 5)
    pool.clear()
    assert pool.cursor is None
    assert [m.client_tx_id for m in pool.pending] == ["queued"]
    assert pool.records() == {("task", "b"): {"n": 3}}
