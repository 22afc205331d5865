"""Untrusted input of the SyncFrame HTTP API: anything JSON gives a 400 naming a field
or a list of well-formed mutations, never another exception (fuzzed with hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.http_api import ApiError
from crdt_sync.mutations import Mutation
from crdt_sync.sync_api import OPS, _decode_cursor, _encode_cursor, parse_mutations

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

mutation_like = st.fixed_dictionaries(
    {},
    optional={
        "t": st.one_of(st.text(max_size=6), json_values),
        "id": st.one_of(st.text(max_size=6), json_values),
        "op": st.one_of(st.sampled_from(["i", "u", "d", "x", ""]), json_values),
        "p": st.one_of(st.dictionaries(st.text(max_size=5), json_values, max_size=3), json_values),
        "client_tx_id": st.one_of(st.text(max_size=8), json_values),
        "base_sid": st.one_of(st.integers(-5, 5), json_values),
    },
)

bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"mutations": st.one_of(st.lists(mutation_like, max_size=4), json_values)},
        optional={"base_sid": json_values, "client_id": json_values},
    ),
)


@settings(max_examples=600, deadline=None)
@given(bodies)
def test_any_json_body_is_parsed_or_refused_with_a_field(body) -> None:
    try:
        mutations, client_id = parse_mutations(body, max_mutations=3)
    except ApiError as exc:
        assert exc.status == 400
        assert exc.error == "invalid_mutation"
        assert exc.extra["field"]
        json.dumps(exc.extra)  # the body it becomes is JSON
        return
    assert 1 <= len(mutations) <= 3
    assert client_id is None or isinstance(client_id, str)
    for m in mutations:
        assert isinstance(m, Mutation)
        assert m.op in OPS and isinstance(m.p, dict)
        assert m.t and "/" not in m.t and m.id
        assert m.base_sid is None or (isinstance(m.base_sid, int) and m.base_sid >= 0)


def test_a_valid_batch_inherits_the_request_base_sid() -> None:
    body = {
        "mutations": [
            {"t": "task", "id": "a/b", "op": "u", "p": {"x": 1}},
            {"t": "task", "id": "2", "op": "d", "base_sid": 3, "client_tx_id": "k"},
        ],
        "base_sid": 7,
        "client_id": "device-1",
    }
    mutations, client_id = parse_mutations(body, max_mutations=10)
    assert client_id == "device-1"
    assert mutations[0] == Mutation("task", "a/b", "u", {"x": 1}, None, 7)
    assert mutations[0].name == "task/a/b"
    assert mutations[1] == Mutation("task", "2", "d", {}, "k", 3)


@pytest.mark.parametrize("flag", [True, False])
def test_booleans_are_not_sids(flag) -> None:
    with pytest.raises(ApiError) as info:
        parse_mutations(
            {"mutations": [{"t": "a", "id": "1", "op": "u", "p": {}}], "base_sid": flag}, 5
        )
    assert info.value.extra["field"] == "base_sid"


@given(st.text(max_size=20), st.text(max_size=20))
def test_record_cursors_round_trip(t, record_id) -> None:
    assert _decode_cursor(_encode_cursor(t, record_id)) == (t, record_id)


@given(st.text(max_size=30))
def test_any_cursor_text_is_decoded_or_refused(cursor) -> None:
    try:
        t, record_id = _decode_cursor(cursor)
    except ApiError as exc:
        assert exc.status == 400
    else:
        assert isinstance(t, str) and isinstance(record_id, str)
