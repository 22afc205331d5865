"""The input contract (crdt_sync.inputs): every parser returns a value or raises
InputError, for any input (hypothesis), and refuses what issue 10 found getting through."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.inputs import (
    MAX_JSON_DEPTH,
    InputError,
    check_name,
    json_depth,
    parse_json,
    parse_uint,
    query_int,
)


def refused(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    assert 400 <= info.value.status < 500 and info.value.error and info.value.detail
    return info.value


# -- integers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["²", "١٢", "٣", "\U0001d7d7", "-1", "+1", " 1", "1_000", "0x10", "1e3"]
)
def test_query_integers_are_ascii_digits_only(raw) -> None:
    # "²".isdigit() is True and int("²") raises: the 500 of issue 10, finding 11.
    error = refused(parse_uint, raw, "since")
    assert error.error == "invalid_parameter" and "since" in error.detail


def test_query_integers_are_bounded_in_length() -> None:
    assert parse_uint("9" * 18, "since") == 10**18 - 1
    refused(parse_uint, "9" * 19, "since")
    refused(parse_uint, "1" * 10_000, "since")


def test_query_int_range_and_default() -> None:
    assert query_int(None, "limit", 100, 1, 1000) == 100
    assert query_int("", "limit", 100, 1, 1000) == 100
    assert query_int("7", "limit", 100, 1, 1000) == 7
    for raw in ("0", "1001", "²", "x"):
        assert "from 1 to 1000" in refused(query_int, raw, "limit", 100, 1, 1000).detail


@given(st.text(max_size=30))
def test_any_text_is_an_integer_or_refused(raw) -> None:
    try:
        value = parse_uint(raw, "n")
    except InputError as exc:
        assert exc.status == 400
    else:
        assert raw.isascii() and raw.isdigit() and value == int(raw)


# -- JSON -------------------------------------------------------------------------------


def test_deep_nesting_is_refused_before_parsing() -> None:
    # json.loads raises RecursionError (not ValueError) at this depth: the traceback
    # on mutations, the unhandled exception on the frame WS, the 1011 for awareness.
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(deep)
    error = refused(parse_json, deep, max_bytes=1 << 20)
    assert error.error == "too_deep"
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(ok, max_bytes=1 << 20) is not None
    assert refused(parse_json, "[" + ok + "]", max_bytes=1 << 20).error == "too_deep"
    assert refused(parse_json, '{"a":' * 200 + "1" + "}" * 200, max_bytes=1 << 20)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 500 + '\\"{' * 100})
    assert json_depth(text.encode()) == 1
    assert parse_json(text, max_bytes=1 << 20)["s"].startswith("[[[")


@pytest.mark.parametrize(
    "raw",
    ['["\\ud800"]', '{"\\udfff": 1}', '"a\\ud83d"', '["\\ude00\\ud83d"]'],
)
def test_lone_surrogates_are_refused(raw) -> None:
    error = refused(parse_json, raw, max_bytes=1024)
    assert error.error == "invalid_json" and "surrogate" in error.detail


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    assert parse_json('["\\ud83d\\ude00"]', max_bytes=1024) == ["\U0001f600"]
    assert parse_json('["\\\\ud800"]', max_bytes=1024) == ["\\ud800"]


@pytest.mark.parametrize("raw", ["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", "[-1e999]"])
def test_non_standard_and_overflowing_numbers_are_refused(raw) -> None:
    assert refused(parse_json, raw, max_bytes=1024).error == "invalid_json"


def test_size_is_checked_in_bytes_and_gives_413() -> None:
    error = refused(parse_json, '"' + "é" * 600 + '"', max_bytes=1000)
    assert (error.status, error.error) == (413, "too_large")


@pytest.mark.parametrize("raw", [b"\xff", b'"\xed\xa0\x80"', b"\xfe\xff\x00[", b"[1,]", b""])
def test_invalid_bytes_are_refused(raw) -> None:
    assert refused(parse_json, raw, max_bytes=1024).error == "invalid_json"


json_text = st.one_of(
    st.text(alphabet='[]{}",:\\ud800nul0123456789.eE-+ \t\nNaIfity', max_size=80),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=30,
    ).map(json.dumps),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(json_text, st.binary(max_size=80)))
def test_any_input_is_json_within_bounds_or_refused(raw) -> None:
    try:
        value = parse_json(raw, max_bytes=4096, max_depth=3)
    except InputError as exc:
        assert exc.status in (400, 413)
        return
    # What is accepted re-encodes as strict UTF-8 JSON, finite, within the depth.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert json_depth(text.encode("utf-8")) <= 3


@given(st.integers(0, 80), st.sampled_from("[{"))
def test_depth_scan_counts_exactly(depth, opener) -> None:
    closer = {"[": "]", "{": "}"}[opener]
    body = ('{"k":' if opener == "{" else "[") * depth
    body += "1" + closer * depth
    assert json_depth(body.encode()) == depth
    try:
        parse_json(body, max_bytes=1 << 16, max_depth=40)
    except InputError as exc:
        assert depth > 40 and exc.error == "too_deep"
    else:
        assert depth <= 40


def test_floats_stay_floats() -> None:
    assert parse_json('{"x": 1.5, "y": 2, "z": -0.0}', max_bytes=100) == {
        "x": 1.5,
        "y": 2,
        "z": -0.0,
    }
    assert math.isfinite(parse_json("1.7976931348623157e308", max_bytes=100))


# -- names ------------------------------------------------------------------------------

REFUSED_IN_NAMES = [
    *[chr(c) for c in range(0x202A, 0x202F)],  # bidi embeddings and overrides
    *[chr(c) for c in range(0x2066, 0x206A)],  # bidi isolates
    "\u200e",
    "\u200f",
    "\u061c",  # directional marks
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",  # zero-width
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",  # controls
    "\ud800",  # a surrogate
    "\ue000",  # private use
    "\u0378",  # unassigned
    "\u2028",
    "\u2029",  # line / paragraph separators
]


@pytest.mark.parametrize("char", REFUSED_IN_NAMES, ids=lambda c: f"U+{ord(c):04X}")
def test_names_refuse_invisible_and_reordering_characters(char) -> None:
    error = refused(check_name, f"issue{char}42", "document name")
    assert error.error == "invalid_name" and f"U+{ord(char):04X}" in error.detail


@pytest.mark.parametrize("name", ["issue/123", "héllo wörld", "日本語", "a b", "😀", "x" * 512])
def test_names_allow_visible_unicode(name) -> None:
    assert check_name(name, "document name") == name


def test_name_length_and_emptiness() -> None:
    refused(check_name, "", "document name")
    assert check_name("", "prefix", allow_empty=True) == ""
    refused(check_name, "x" * 513, "document name")


@given(st.text(max_size=20))
def test_any_text_is_a_name_or_refused(text) -> None:
    try:
        check_name(text, "name")
    except InputError as exc:
        assert exc.error == "invalid_name"
    else:
        assert text and all(c.isprintable() or c == " " or c.isspace() for c in text)
