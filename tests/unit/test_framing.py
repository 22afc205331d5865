"""persistence.framing.settle: what a draft becomes against the stored record row."""

from __future__ import annotations

from typing import Any

from persistence.framing import fold, settle
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


def test_a_draft_from_an_older_view_than_the_row_is_stale() -> None:
    # drafted by a node holding the doc up to update 3; the row was framed at 5
    d = draft("u", {"a": 2}, {"a": 2}, update_id=3)
    assert settle(d, {"a": 1}, 5) is None
    # from the same or a newer view: what differs from the row is new
    assert settle(d, {"a": 1}, 3) == d
    assert settle(d, {"a": 1}, None) == d
    # a delete is never stale
    gone = draft("d", {}, None, update_id=3)
    assert settle(gone, {"a": 1}, 5) == gone


def test_a_nodes_own_change_is_never_stale() -> None:
    # no update_id: drafted before its update's id was known, queued after it
    d = draft("u", {"a": 2}, {"a": 2})
    assert settle(d, {"a": 1}, 5) == d


def test_an_update_keeps_only_what_differs_from_the_row() -> None:
    d = draft("u", {"a": 2, "b": 1, "c": None}, {"a": 2, "b": 1})
    out = settle(d, {"a": 2, "b": 0, "c": "x"})
    assert out is not None and out.p == {"b": 1, "c": None} and out.op == "u"
    assert out.record == {"a": 2, "b": 1}


def test_an_update_with_nothing_new_is_dropped() -> None:
    assert settle(draft("u", {"a": 2}, {"a": 2}), {"a": 2}) is None
    # removing a field the row does not hold is nothing new either
    assert settle(draft("u", {"z": None}, {}), {}) is None


def test_true_is_not_one() -> None:
    out = settle(draft("u", {"a": True}, {"a": True}), {"a": 1})
    assert out is not None and out.p == {"a": True}


def test_an_insert_of_a_stored_record_becomes_an_update_of_the_difference() -> None:
    out = settle(draft("i", {"a": 1, "b": 2}, {"a": 1, "b": 2}), {"a": 1, "c": 3})
    assert out is not None and out.op == "u" and out.p == {"b": 2, "c": None}
    assert settle(draft("i", {"a": 1}, {"a": 1}), {"a": 1}) is None


def test_an_insert_or_update_without_a_row_is_kept_whole() -> None:
    d = draft("i", {"a": 1}, {"a": 1})
    assert settle(d, None) == d
    u = draft("u", {"a": 1}, {"a": 1})
    assert settle(u, None) == u


def test_a_delete_is_always_logged() -> None:
    d = draft("d", {}, None)
    assert settle(d, None) == d
    assert settle(d, {"a": 1}) == d


def test_fold_applies_p_to_the_row() -> None:
    assert fold({"a": 1, "b": 2}, draft("u", {"b": None, "c": 3}, {})) == {"a": 1, "c": 3}
    assert fold({"a": 1}, draft("i", {"x": 1}, {"x": 1})) == {"x": 1}
    assert fold(None, draft("u", {"x": 1}, {"x": 1})) == {"x": 1}
    assert fold({"a": 1}, draft("d", {}, None)) is None


def test_a_row_folded_from_settled_drafts_of_two_views_equals_the_newest_values() -> None:
    row = fold(None, draft("i", {"a": 1, "b": 1}, {"a": 1, "b": 1}))
    # node A changed a; node B, which has not seen that yet, changed b
    for d in (draft("u", {"a": 2}, {"a": 2, "b": 1}), draft("u", {"b": 5}, {"a": 1, "b": 5})):
        settled = settle(d, row)
        assert settled is not None
        row = fold(row, settled)
    assert row == {"a": 2, "b": 5}
    # B, once it sees A's change, drafts a=2 again: nothing new
    assert settle(draft("u", {"a": 2}, {"a": 2, "b": 5}), row) is None


def test_a_field_projected_as_null_is_not_a_removal() -> None:
    # NaN from a Yjs client is projected as null: the field is there, its value null.
    d = draft("u", {"high": None}, {"a": 1, "high": None})
    out = settle(d, {"a": 1})
    assert out is not None and out.p == {"high": None}
    assert fold({"a": 1}, d) == {"a": 1, "high": None}
    # and once the row holds that null, the same draft is nothing new
    assert settle(d, {"a": 1, "high": None}) is None
    # a removal (not in the record) of a field the row holds is new
    removal = draft("u", {"high": None}, {"a": 1})
    assert settle(removal, {"a": 1, "high": None}) == removal
    assert fold({"a": 1, "high": None}, removal) == {"a": 1}
