"""Awareness bookkeeping: acceptance rules, ownership, removal on disconnect."""

from __future__ import annotations

import time

import pytest

from rooms.awareness import RoomAwareness
from rooms.close_codes import CloseCode
from rooms.codec import AwarenessEntry as E
from rooms.limits import LimitExceeded


def test_newer_clock_wins_older_is_ignored() -> None:
    aw = RoomAwareness()
    assert aw.apply(1, [E(10, 2, '{"a":1}')]) == [E(10, 2, '{"a":1}')]
    assert aw.apply(1, [E(10, 1, '{"a":0}')]) == []
    assert aw.apply(1, [E(10, 2, '{"a":9}')]) == []  # same clock, not a removal
    assert aw.current() == [E(10, 2, '{"a":1}')]


def test_same_clock_removal_is_accepted_once() -> None:
    aw = RoomAwareness()
    aw.apply(1, [E(10, 2, '{"a":1}')])
    assert aw.apply(1, [E(10, 2, "null")]) == [E(10, 2, "null")]
    assert aw.apply(1, [E(10, 2, "null")]) == []
    assert aw.current() == []
    assert len(aw) == 0


def test_disconnect_removes_only_that_connections_clients_with_clock_plus_one() -> None:
    aw = RoomAwareness()
    aw.apply(1, [E(10, 5, '{"u":"a"}'), E(11, 1, '{"u":"b"}')])
    aw.apply(2, [E(20, 3, '{"u":"c"}')])
    assert aw.client_ids_of(1) == {10, 11}
    removals = aw.remove_owner(1)
    assert removals == [E(10, 6, "null"), E(11, 2, "null")]
    assert [e.client_id for e in aw.current()] == [20]
    assert aw.remove_owner(1) == []


def test_client_removed_by_itself_is_not_removed_again() -> None:
    aw = RoomAwareness()
    aw.apply(1, [E(10, 1, '{"u":"a"}')])
    aw.apply(1, [E(10, 2, "null")])
    assert aw.remove_owner(1) == []


def test_client_that_moved_to_a_new_connection_survives_the_old_one_closing() -> None:
    aw = RoomAwareness()
    aw.apply(1, [E(10, 1, '{"u":"a"}')])
    aw.apply(2, [E(10, 2, '{"u":"a"}')])  # reconnected before the old socket timed out
    assert aw.remove_owner(1) == []
    assert aw.current() == [E(10, 2, '{"u":"a"}')]
    assert aw.remove_owner(2) == [E(10, 3, "null")]


def test_stale_states_are_not_sent_to_newcomers() -> None:
    aw = RoomAwareness(outdated_seconds=0.0)
    aw.apply(1, [E(10, 1, '{"u":"a"}')])
    assert aw.current() == []


# -- bounds (issue 10) -------------------------------------------------------------------


def test_removal_of_a_client_nobody_saw_is_not_remembered() -> None:
    aw = RoomAwareness()
    for client_id in range(1000):
        assert aw.apply(1, [E(client_id, 5, "null")]) == [E(client_id, 5, "null")]
    assert aw.entries == 0 and len(aw) == 0


def test_removed_and_outdated_entries_are_forgotten_after_the_timeout() -> None:
    aw = RoomAwareness(outdated_seconds=30.0)
    aw.apply(1, [E(10, 1, '{"u":"a"}'), E(11, 1, '{"u":"b"}')])
    aw.apply(1, [E(10, 2, "null")])  # removed: a tombstone for now
    assert aw.entries == 2
    assert aw.prune(time.monotonic() + 10) == 0
    assert aw.prune(time.monotonic() + 31) == 2  # the tombstone and the stale state
    assert aw.entries == 0 and len(aw) == 0 and aw.client_ids_of(1) == set()
    assert aw.remove_owner(1) == []


def test_renewed_state_outlives_the_timeout_of_its_first_version() -> None:
    aw = RoomAwareness(outdated_seconds=30.0)
    aw.apply(1, [E(10, 1, '{"u":"a"}'), E(11, 1, '{"u":"b"}')])
    aw.apply(1, [E(10, 2, '{"u":"a"}')])
    # Only what was not renewed since is old enough: 11, not 10.
    renewed_at = time.monotonic()
    aw._known[11].updated = renewed_at - 40
    assert aw.prune(renewed_at) == 1
    assert [e.client_id for e in aw.current()] == [10]


def test_one_connection_carries_at_most_max_per_owner_client_ids() -> None:
    aw = RoomAwareness(max_per_owner=3)
    aw.apply(1, [E(1, 1, "{}"), E(2, 1, "{}")])
    with pytest.raises(LimitExceeded) as caught:
        aw.apply(1, [E(3, 1, "{}"), E(4, 1, "{}")])
    assert caught.value.code == CloseCode.AWARENESS_LIMIT
    assert {e.client_id for e in aw.current()} == {1, 2}, "nothing of the message is kept"
    assert aw.apply(1, [E(1, 2, '{"x":1}'), E(3, 1, "{}")])  # renewals do not count twice
    assert aw.apply(2, [E(9, 1, "{}")]), "other connections have their own allowance"
    aw.apply(1, [E(3, 2, "null")])
    assert aw.apply(1, [E(5, 1, "{}")]), "a removed id frees its place"


def test_room_holds_at_most_max_per_room_live_client_ids() -> None:
    aw = RoomAwareness(max_per_owner=10, max_per_room=4)
    aw.apply(1, [E(1, 1, "{}"), E(2, 1, "{}")])
    aw.apply(2, [E(3, 1, "{}"), E(4, 1, "{}")])
    with pytest.raises(LimitExceeded):
        aw.apply(3, [E(5, 1, "{}")])
    assert aw.apply(3, [E(4, 2, "{}")]), "taking over a live id adds none"
    assert aw.remove_owner(2) == [E(3, 2, "null")]
    assert aw.apply(3, [E(5, 1, "{}")])
    assert len(aw) == 4


def test_a_state_larger_than_max_state_bytes_is_refused() -> None:
    aw = RoomAwareness(max_state_bytes=100)
    assert aw.apply(1, [E(1, 1, '"' + "x" * 98 + '"')])
    with pytest.raises(LimitExceeded) as caught:
        aw.apply(1, [E(2, 1, "{}"), E(1, 2, '"' + "x" * 99 + '"')])
    assert caught.value.error == "awareness_state_too_large"
    assert [e.client_id for e in aw.current()] == [1] and aw.current()[0].clock == 1
