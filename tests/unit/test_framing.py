"""persistence.framing.settle: what a draft becomes against the stored record row."""

from __future__ import annotations

from typing import Any

from persistence.framing import settle
from persistence.store import FrameDraft


def draft(op: str, p: dict[str, Any], record: dict[str, Any] | None, update_id: int | None = None):
    return FrameDraft(
        t="task",
        id="1",
        op=op,
        p=p,
        who="ann",
        at=1,
        ctx={},
        record=record,
        update_id=update_id,
    )


def test_a_draft_the_row_already_covers_is_stale() -> None:
    d = draft("u", {"a": 2}, {"a": 2}, update_id=5)
    assert settle(d, {"a": 1}, 5) is None
    assert settle(d, {"a": 1}, 7) is None
    assert settle(d, {"a": 1}, 4) == d


def test_no_update_id_is_never_stale() -> None:
    d = draft("u", {"a": 2}, {"a": 2})
    assert settle(d, {"a": 1}, 99) == d


def test_an_update_keeps_only_what_differs_from_the_row() -> None:
    d = draft("u", {"a": 2, "b": 1, "c": None}, {"a": 2, "b": 1})
    out = settle(d, {"a": 2, "b": 0, "c": "x"}, 1)
    assert out is not None and out.p == {"b": 1, "c": None} and out.op == "u"
    assert out.record == {"a": 2, "b": 1}


def test_an_update_with_nothing_new_is_dropped() -> None:
    assert settle(draft("u", {"a": 2}, {"a": 2}), {"a": 2}, 1) is None
    # removing a field the row does not hold is nothing new either
    assert settle(draft("u", {"z": None}, {}), {}, 1) is None


def test_true_is_not_one() -> None:
    out = settle(draft("u", {"a": True}, {"a": True}), {"a": 1}, 1)
    assert out is not None and out.p == {"a": True}


def test_an_insert_of_a_stored_record_becomes_an_update_of_the_difference() -> None:
    out = settle(draft("i", {"a": 1, "b": 2}, {"a": 1, "b": 2}), {"a": 1, "c": 3}, 1)
    assert out is not None and out.op == "u" and out.p == {"b": 2, "c": None}
    assert settle(draft("i", {"a": 1}, {"a": 1}), {"a": 1}, 1) is None


def test_an_insert_or_update_without_a_row_is_kept_whole() -> None:
    d = draft("i", {"a": 1}, {"a": 1})
    assert settle(d, None, None) == d
    u = draft("u", {"a": 1}, {"a": 1})
    assert settle(u, None, None) == u


def test_a_delete_needs_a_row() -> None:
    d = draft("d", {}, None)
    assert settle(d, None, None) is None
    assert settle(d, {"a": 1}, 3) == d
