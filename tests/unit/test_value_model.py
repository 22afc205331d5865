"""The value model (crdt_sync.records.projection.conform): whatever a doc or a client holds,
the projection is strict JSON, and HTTP mutations refuse the same values up front."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from crdt_sync.records.projection import (
    CONFORMED,
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    RootTypes,
    conform,
    doc_to_json,
    project,
)
from crdt_sync.records.writes import FieldError, check_value, plan_write
from persistence import values

LONE = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d\ude00"])
TEXT = st.lists(st.one_of(st.text(max_size=5), LONE), max_size=4).map("".join)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.binary(max_size=4),
)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner),
        st.dictionaries(TEXT, inner, max_size=4),
    ),
    max_leaves=30,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def strict(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(ANY)
def test_the_projection_of_any_value_is_strict_json(value: Any) -> None:
    out, reason = conform(value)
    strict(out)  # no NaN, no infinity, no lone surrogate, JSON types only
    values.dumps({"v": out}, "v")  # what the store stores and reads back
    assert conform(out) == (out, None)  # within the model: left alone
    assert (reason is None) == (out == _plain(value)), (value, out, reason)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=3 * MAX_DEPTH), SCALARS)
def test_nesting_past_the_bound_is_projected_as_null(depth: int, leaf: Any) -> None:
    out, reason = conform(nested(depth, leaf))
    strict(out)
    if depth > MAX_DEPTH:
        assert reason == "too_deep"
        assert out == nested(MAX_DEPTH + 1, None)  # levels 0..32 kept


def _plain(value: Any) -> Any:
    """What conform gives for a value within the model (integral doubles as ints)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_each_kind_of_value_outside_the_model() -> None:
    assert conform(float("nan")) == (None, "non_finite")
    assert conform([1, float("inf")]) == ([1, None], "non_finite")
    assert conform("a\ud800b") == ("a\ufffdb", "invalid_unicode")
    assert conform({"\udfff": 1}) == ({"\ufffd": 1}, "invalid_unicode")
    assert conform("\ud83d\ude00") == ("\U0001f600", "invalid_unicode")  # a split pair
    assert conform(b"\x00") == (None, "not_json")
    assert conform(Doc()) == (None, "not_json")
    assert conform("x" * MAX_VALUE_BYTES) == (None, "too_large")
    assert conform(["x" * (MAX_VALUE_BYTES // 2)] * 3) == (None, "too_large")
    big_but_fine = "é" * (MAX_VALUE_BYTES // 4)
    assert conform(big_but_fine) == (big_but_fine, None)
    assert conform(3.0) == (3, None) and conform(2.5) == (2.5, None)


def test_a_record_doc_with_values_outside_the_model_is_projected_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = Doc()
    fields = doc.get("fields", type=Map)
    fields["n"] = float("nan")
    fields["inf"] = float("inf")
    fields["raw"] = b"\x01"
    fields["deep"] = nested(MAX_DEPTH + 3)
    fields["ok"] = 2.0
    doc["body"] = Text("hello")
    before = CONFORMED.copy()
    types = RootTypes("t/1")
    with caplog.at_level(logging.WARNING, logger="crdt_sync.records.projection"):
        first = project(doc, types)
        again = project(doc, types)
    assert first == again
    assert first == {
        "n": None,
        "inf": None,
        "raw": None,
        "deep": nested(MAX_DEPTH + 1, None),
        "ok": 2,
        "body": "hello",
    }
    strict(first)
    assert CONFORMED - before == {"non_finite": 2, "not_json": 1, "too_deep": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # once per field, not once per projection
    assert all(line.startswith("record 't/1' field ") for line in lines)
    # The CRDT itself is untouched.
    assert math.isnan(fields["n"])


def test_docs_are_read_within_the_model() -> None:
    doc = Doc()
    doc.get("fields", type=Map)["x"] = float("-inf")
    doc.get("list", type=Array).append(float("nan"))
    assert doc_to_json(doc) == {"fields": {"x": None}, "list": [None]}


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (float("nan"), "not finite"),
        (float("inf"), "not finite"),
        ("a\ud800", "lone surrogate"),
        ({"k\udc00": 1}, "lone surrogate"),
        (nested(MAX_DEPTH + 1), "deeper than 32"),
        ("x" * MAX_VALUE_BYTES, f"larger than {MAX_VALUE_BYTES}"),
        (2**60, "safe range"),
    ],
)
def test_mutations_refuse_values_outside_the_model(value: Any, detail: str) -> None:
    with pytest.raises(FieldError, match=detail) as caught:
        check_value("f", value)
    assert caught.value.status == 422
    doc = Doc()
    with pytest.raises(FieldError):
        plan_write(doc, RootTypes(), {"f": value})
    assert doc.get_state() == b"\x00"  # nothing applied


def test_a_field_name_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(FieldError, match="not valid Unicode") as caught:
        plan_write(Doc(), RootTypes(), {"bad\ud800": 1})
    assert caught.value.status == 400


def test_values_at_the_bounds_are_accepted() -> None:
    check_value("f", nested(MAX_DEPTH))
    check_value("f", "x" * (MAX_VALUE_BYTES - 2))
    check_value("f", {"emoji": "\U0001f600", "n": 1.5})
