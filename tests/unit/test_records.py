"""Record projection, field diffs and mutation writes (crdt_sync.records.projection,
crdt_sync.records.writes): pure functions checked against real pycrdt docs, including
concurrent edits merged from another replica."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from crdt_sync.records.projection import FIELDS_ROOT, RootTypes, diff, plain, project
from crdt_sync.records.writes import MAX_SAFE_INTEGER, FieldError, plan_write, replace_text


def write(doc: Doc, p: dict[str, Any], types: RootTypes | None = None) -> None:
    """Plan and apply ``p`` in one transaction, as the feed does."""
    apply = plan_write(doc, types or RootTypes(), p)
    with doc.transaction():
        apply(doc)


def replica(doc: Doc) -> Doc:
    """A second peer with the same state (its roots are not typed yet)."""
    other = Doc()
    other.apply_update(doc.get_update())
    return other


def merge(a: Doc, b: Doc) -> None:
    """Exchange what each peer is missing."""
    to_b = a.get_update(b.get_state())
    to_a = b.get_update(a.get_state())
    b.apply_update(to_b)
    a.apply_update(to_a)


def byte_index(s: str, chars: int) -> int:
    """pycrdt indexes text by UTF-8 bytes."""
    return len(s[:chars].encode("utf-8"))


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def text_doc(body: str) -> Doc:
    doc = Doc()
    doc.get("body", type=Text).insert(0, body)
    return doc


# -- project ---------------------------------------------------------------------------


def test_project_empty_doc_has_no_fields() -> None:
    assert project(Doc(), RootTypes()) == {}


def test_project_reads_fields_map_and_every_root_by_name() -> None:
    doc = Doc()
    fields = doc.get(FIELDS_ROOT, type=Map)
    fields["title"] = "Ünïcode 😀"
    fields["done"] = False
    fields["meta"] = {"tags": ["a", "b"], "n": 1.5}
    doc.get("body", type=Text).insert(0, "héllo")
    doc.get("items", type=Array).extend([1, "two", {"three": 3}])
    doc.get("extra", type=Map)["k"] = "v"
    frag = doc.get("rich", type=XmlFragment)
    frag.children.append(XmlElement("p", {}, [XmlText("hi")]))
    assert project(doc, RootTypes()) == {
        "title": "Ünïcode 😀",
        "done": False,
        "meta": {"tags": ["a", "b"], "n": 1.5},
        "body": "héllo",
        "items": [1, "two", {"three": 3}],
        "extra": {"k": "v"},
        "rich": "<p>hi</p>",
    }


def test_project_root_wins_over_a_fields_entry_of_the_same_name() -> None:
    doc = Doc()
    doc.get(FIELDS_ROOT, type=Map)["body"] = "shadowed"
    doc.get("body", type=Text).insert(0, "what editors see")
    assert project(doc, RootTypes()) == {"body": "what editors see"}


def test_project_gives_integral_floats_back_as_ints() -> None:
    doc = Doc()
    fields = doc.get(FIELDS_ROOT, type=Map)
    fields["n"] = 3.0
    fields["x"] = 2.5
    fields["list"] = [1.0, 2.5, {"deep": 4.0}]
    doc.get("arr", type=Array).extend([7.0, 0.5])
    got = project(doc, RootTypes())
    assert got == {"n": 3, "x": 2.5, "list": [1, 2.5, {"deep": 4}], "arr": [7, 0.5]}
    assert type(got["n"]) is int
    assert type(got["list"][0]) is int and type(got["list"][2]["deep"]) is int
    assert type(got["arr"][0]) is int and type(got["x"]) is float


def test_project_leaves_empty_roots_out() -> None:
    doc = Doc()
    doc.get("body", type=Text)
    doc.get("items", type=Array)
    doc.get(FIELDS_ROOT, type=Map)["a"] = 1
    assert project(doc, RootTypes()) == {"a": 1}


def test_project_infers_roots_that_arrived_untyped_in_an_update() -> None:
    source = Doc()
    source.get(FIELDS_ROOT, type=Map)["title"] = "t"
    source.get("body", type=Text).insert(0, "text")
    source.get("items", type=Array).extend([1, 2])
    source.get("m", type=Map)["k"] = 1
    received = replica(source)  # as a live room gets it: roots without types
    types = RootTypes()
    expected = {"title": "t", "body": "text", "items": [1, 2], "m": {"k": 1}}
    assert project(received, types) == expected
    # The live doc was not typed wrongly by the probe: editors can still use it.
    received.get("body", type=Text).insert(4, "!")
    received.get("items", type=Array).append(3)
    assert project(received, types) == {**expected, "body": "text!", "items": [1, 2, 3]}


def test_a_fields_root_that_is_not_a_map_is_a_field_itself() -> None:
    doc = Doc()
    doc.get(FIELDS_ROOT, type=Text).insert(0, "just text")
    assert project(doc, RootTypes()) == {"fields": "just text"}


# -- diff ------------------------------------------------------------------------------


def test_diff_of_a_new_record_is_everything() -> None:
    after = {"a": 1, "b": None, "c": [1]}
    p = diff(None, after)
    assert p == after
    assert p is not after  # a copy: moving the baseline later must not change the frame


def test_diff_has_only_changed_keys_and_removed_ones_as_null() -> None:
    before = {"same": "x", "changed": 1, "gone": "bye", "nested": {"a": [1, 2]}}
    after = {"same": "x", "changed": 2, "nested": {"a": [1, 2]}, "new": False}
    assert diff(before, after) == {"changed": 2, "gone": None, "new": False}
    assert diff(after, after) == {}


def test_diff_tells_true_from_one_and_nested_type_changes() -> None:
    assert diff({"f": 1}, {"f": True}) == {"f": True}
    assert diff({"f": True}, {"f": 1}) == {"f": 1}
    assert diff({"f": 0}, {"f": False}) == {"f": False}
    assert diff({"f": [1]}, {"f": [True]}) == {"f": [True]}
    assert diff({"f": {"k": 1}}, {"f": {"k": True}}) == {"f": {"k": True}}
    assert diff({"f": {"k": 1}}, {"f": {"j": 1}}) == {"f": {"j": 1}}
    assert diff({"f": [1, 2]}, {"f": [1]}) == {"f": [1]}
    assert diff({"f": None}, {"f": None}) == {}


def test_diff_of_a_value_set_to_null_is_a_change() -> None:
    assert diff({"f": 1}, {"f": None}) == {"f": None}


# -- plan_write: roots -------------------------------------------------------------------


def test_write_text_root_with_a_minimal_edit_merges_with_a_concurrent_edit() -> None:
    base = "The quick fox jumps over"
    a = text_doc(base)
    b = replica(a)
    write(a, {"body": "The quick brown fox jumps over"})
    # Meanwhile another peer edits inside the prefix and the suffix that a kept.
    body_b = b.get("body", type=Text)
    with b.transaction():
        del body_b[4:9]  # "quick"
        body_b.insert(4, "slow")
    body_b.insert(len(str(body_b).encode()), " it")
    merge(a, b)
    expected = "The slow brown fox jumps over it"
    assert str(a.get("body", type=Text)) == expected
    assert str(b.get("body", type=Text)) == expected


def test_write_text_root_with_non_ascii_and_emoji_merges_concurrently() -> None:
    base = "héllo 😀 wörld 👋🏽"
    a = text_doc(base)
    b = replica(a)
    write(a, {"body": "héllo 🙂 wörld 👋🏽"})
    assert str(a.get("body", type=Text)) == "héllo 🙂 wörld 👋🏽"
    body_b = b.get("body", type=Text)
    body_b.insert(byte_index(base, 5), "→")  # after "héllo"
    now = str(body_b)
    body_b.insert(byte_index(now, now.index("wörld") + 1), "ö")  # inside the suffix
    body_b.insert(len(str(body_b).encode()), " ✓")
    merge(a, b)
    expected = "héllo→ 🙂 wöörld 👋🏽 ✓"
    assert str(a.get("body", type=Text)) == expected
    assert str(b.get("body", type=Text)) == expected
    assert project(a, RootTypes())["body"] == expected


def test_write_text_root_null_empties_it_and_same_value_writes_nothing() -> None:
    doc = text_doc("abc")
    state = doc.get_state()
    write(doc, {"body": "abc"})
    assert doc.get_state() == state
    write(doc, {"body": None})
    assert str(doc.get("body", type=Text)) == ""


def test_write_array_and_map_roots_replaces_them() -> None:
    doc = Doc()
    doc.get("items", type=Array).extend([1, 2, 3])
    ymap = doc.get("m", type=Map)
    ymap["a"] = 1
    ymap["b"] = 2
    types = RootTypes()
    write(doc, {"items": ["x", {"y": 1}], "m": {"b": 3, "c": [4]}}, types)
    assert doc.get("items", type=Array).to_py() == ["x", {"y": 1}]
    assert plain(doc.get("m", type=Map).to_py()) == {"b": 3, "c": [4]}
    assert project(doc, types) == {"items": ["x", {"y": 1}], "m": {"b": 3, "c": [4]}}
    state = doc.get_state()
    write(doc, {"items": ["x", {"y": 1}], "m": {"b": 3, "c": [4]}}, types)
    assert doc.get_state() == state  # unchanged values are not rewritten


def test_write_into_roots_that_arrived_untyped() -> None:
    source = Doc()
    source.get("body", type=Text).insert(0, "old")
    source.get("items", type=Array).extend([1])
    doc = replica(source)
    write(doc, {"body": "new", "items": [2, 3]})
    assert project(doc, RootTypes()) == {"body": "new", "items": [2, 3]}


# -- plan_write: the fields map ----------------------------------------------------------


def test_other_fields_go_to_the_fields_map_and_null_removes_them() -> None:
    doc = Doc()
    types = RootTypes()
    write(doc, {"title": "Ünï", "n": 3, "tags": ["a"], "obj": {"k": None}}, types)
    assert doc.get(FIELDS_ROOT, type=Map).to_py() == {
        "title": "Ünï",
        "n": 3,
        "tags": ["a"],
        "obj": {"k": None},
    }
    write(doc, {"title": None, "missing": None}, types)
    assert project(doc, types) == {"n": 3, "tags": ["a"], "obj": {"k": None}}
    assert "missing" not in doc.get(FIELDS_ROOT, type=Map)


def test_a_field_named_fields_is_an_entry_of_the_fields_map() -> None:
    doc = Doc()
    write(doc, {"a": 1})
    write(doc, {FIELDS_ROOT: "x"})
    assert project(doc, RootTypes()) == {"a": 1, FIELDS_ROOT: "x"}


def test_true_over_one_is_written_and_same_value_is_not() -> None:
    doc = Doc()
    write(doc, {"f": 1, "g": [1, {"h": 2}]})
    state = doc.get_state()
    write(doc, {"f": 1, "g": [1, {"h": 2}]})
    assert doc.get_state() == state
    write(doc, {"f": True})
    assert project(doc, RootTypes())["f"] is True


def test_fields_root_that_is_not_a_map_refuses_entries() -> None:
    doc = Doc()
    doc.get(FIELDS_ROOT, type=Text).insert(0, "text")
    with pytest.raises(FieldError) as info:
        plan_write(doc, RootTypes(), {"title": "x"})
    assert info.value.field == "title" and info.value.status == 422


# -- plan_write: refusals ----------------------------------------------------------------


def _typed_doc() -> Doc:
    doc = Doc()
    doc.get("body", type=Text).insert(0, "text")
    doc.get("items", type=Array).extend([1])
    doc.get("m", type=Map)["k"] = 1
    doc.get("rich", type=XmlFragment).children.append(XmlElement("p", {}, [XmlText("x")]))
    doc.get(FIELDS_ROOT, type=Map)["title"] = "t"
    return doc


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("body", 5, 422),
        ("body", ["text"], 422),
        ("items", {"a": 1}, 422),
        ("items", "abc", 422),
        ("m", [1], 422),
        ("m", "x", 422),
        ("rich", "<p>y</p>", 422),
        ("title", math.nan, 422),
        ("title", math.inf, 422),
        ("title", [1, -math.inf], 422),
        ("title", {"x": {"y": math.nan}}, 422),
        ("title", 2**53, 422),
        ("title", -(2**53), 422),
        ("title", [10**20], 422),
        ("title", nested(33), 422),
        ("title", {1: "x"}, 422),
        ("title", {"a", "b"}, 422),
        ("title", b"bytes", 422),
        ("", "x", 400),
    ],
)
def test_invalid_fields_are_refused_and_nothing_is_written(
    field: str, value: Any, status: int
) -> None:
    doc = _typed_doc()
    state = doc.get_update()
    # Valid fields before the invalid one (last): they must not be written either.
    valid = {"title": "changed", "body": "changed", "items": [9], "zzz": 1}
    p = {**{k: v for k, v in valid.items() if k != field}, field: value}
    with pytest.raises(FieldError) as info:
        plan_write(doc, RootTypes(), p)
    assert info.value.field == field
    assert info.value.status == status
    assert str(info.value)
    assert doc.get_update() == state


def test_safe_integers_and_32_levels_of_nesting_are_accepted() -> None:
    doc = Doc()
    p = {
        "max": MAX_SAFE_INTEGER,
        "min": -MAX_SAFE_INTEGER,
        "big_float": 1e300,
        "deep": nested(32),
        "deep_obj": {"a": nested(31)},
    }
    write(doc, p)
    assert project(doc, RootTypes()) == plain(p)


# -- round trips (hypothesis) ------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
field_names = st.text(min_size=1, max_size=6).filter(lambda s: s != FIELDS_ROOT)


@settings(max_examples=100, deadline=None)
@given(p=st.dictionaries(field_names, json_values, max_size=5))
def test_written_fields_project_back_and_rewriting_them_changes_nothing(
    p: dict[str, Any],
) -> None:
    doc = Doc()
    types = RootTypes()
    write(doc, p, types)
    expected = {k: plain(v) for k, v in p.items() if v is not None}
    assert diff(expected, project(doc, types)) == {}
    state = doc.get_state()
    write(doc, plain(p), types)
    assert doc.get_state() == state


text_chars = st.sampled_from("ab é😀🙂中\u0301") | st.characters(codec="utf-8")


@settings(max_examples=300, deadline=None)
@given(old=st.text(text_chars, max_size=12), new=st.text(text_chars, max_size=12))
def test_replace_text_makes_the_text_equal_new(old: str, new: str) -> None:
    doc = text_doc(old)
    text = doc.get("body", type=Text)
    with doc.transaction():
        replace_text(text, str(text), new)
    assert str(text) == new
    # A replica that receives the edit agrees.
    assert str(replica(doc).get("body", type=Text)) == new


# Kept and changed parts from disjoint alphabets: the common prefix and suffix that
# replace_text finds then include all of ``kept_head`` and ``kept_tail``.
kept_text = st.text(st.sampled_from("ab中🙂\U0010fffd"), max_size=6)
changed_text = st.text(st.sampled_from("xyé😀\u0301"), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    head=kept_text,
    old_mid=changed_text,
    new_mid=changed_text,
    tail=kept_text,
    data=st.data(),
)
def test_replace_text_keeps_what_a_concurrent_peer_edits_around(
    head: str, old_mid: str, new_mid: str, tail: str, data: st.DataObject
) -> None:
    old = head + old_mid + tail
    # Where the peer inserts: strictly inside the kept head (before head[i]) or the
    # kept tail (after tail[i - 1]), never at the edge of the changed part.
    spots = [("head", i) for i in range(len(head))] + [("tail", i) for i in range(1, len(tail) + 1)]
    if not spots:
        return
    part, i = data.draw(st.sampled_from(spots), label="spot")
    mark = "<\U0001f4a5>"
    if part == "head":
        at = i
        expected = head[:i] + mark + head[i:] + new_mid + tail
    else:
        at = len(head) + len(old_mid) + i
        expected = head + new_mid + tail[:i] + mark + tail[i:]
    a = text_doc(old)
    b = replica(a)
    text_a = a.get("body", type=Text)
    with a.transaction():
        replace_text(text_a, old, head + new_mid + tail)
    text_b = b.get("body", type=Text)
    text_b.insert(byte_index(old, at), mark)
    merge(a, b)
    assert str(text_a) == expected
    assert str(text_b) == expected


def test_projection_of_emptied_roots_does_not_depend_on_history() -> None:
    """A live room (types cached while the roots had content) and the same state
    loaded afresh project alike: an emptied root is no field in either."""
    live = Doc()
    live.get(FIELDS_ROOT, type=Map)["a"] = 1
    body = live.get("body", type=Text)
    body.insert(0, "text")
    items = live.get("items", type=Array)
    items.extend([1])
    types = RootTypes()
    assert project(live, types) == {"a": 1, "body": "text", "items": [1]}
    del body[0:4]
    del items[0:1]
    reloaded = replica(live)
    assert project(live, types) == project(reloaded, RootTypes()) == {"a": 1}
    # Writing a string to the emptied root of unknown type makes it a text again.
    write = plan_write(reloaded, RootTypes(), {"body": "again"})
    write(reloaded)
    assert project(reloaded, RootTypes()) == {"a": 1, "body": "again"}
