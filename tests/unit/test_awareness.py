"""Awareness bookkeeping: acceptance rules, ownership, removal on disconnect."""

from __future__ import annotations

from rooms.awareness import RoomAwareness
from rooms.wire import AwarenessEntry as E


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
