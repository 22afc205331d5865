"""The Redis wire: room and frame messages round-trip; untrusted bytes only ever raise
WireError; channel names cannot collide."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persistence.store import Frame
from rooms.broadcaster import RemoteAwareness, RemoteUpdate
from rooms.redis_wire import (
    WireError,
    decode_frames,
    decode_room_message,
    doc_channel,
    encode_frames,
    encode_room_message,
    lease_key,
)

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)
texts = st.text()  # lone surrogates included

updates = st.builds(
    RemoteUpdate,
    origin=texts,
    org=texts,
    name=texts,
    update_id=ids,
    prev_update_id=ids,
    update=st.binary(),
    actor=texts,
)
awareness = st.builds(RemoteAwareness, origin=texts, org=texts, name=texts, message=st.binary())

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def frame_lists(draw: st.DrawFn) -> tuple[str, list[Frame]]:
    org = draw(st.text())
    sids = sorted(draw(st.sets(st.integers(min_value=1, max_value=2**62), max_size=5)))
    frames = [
        Frame(
            sid=sid,
            org=org,
            t=draw(st.text()),
            id=draw(st.text()),
            op=draw(st.sampled_from(["c", "u", "d"])),
            p=draw(st.dictionaries(st.text(), json_values, max_size=3)),
            who=draw(st.none() | st.text()),
            at=draw(st.integers(min_value=0, max_value=2**62)),
            ctx=draw(st.dictionaries(st.text(), json_values, max_size=2)),
        )
        for sid in sids
    ]
    return org, frames


@given(st.one_of(updates, awareness))
def test_room_message_round_trip(message: RemoteUpdate | RemoteAwareness) -> None:
    assert decode_room_message(encode_room_message(message)) == message


def test_room_message_layout_starts_with_version_and_kind() -> None:
    update = encode_room_message(RemoteUpdate("n1", "o", "d", 7, 6, b"\x00\x01", "alice"))
    aware = encode_room_message(RemoteAwareness("n1", "o", "d", b"\x01"))
    assert update[:2] == b"\x01\x01"
    assert aware[:2] == b"\x01\x02"


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_room_decoder_only_raises_wire_error(data: bytes) -> None:
    try:
        decoded = decode_room_message(data)
    except WireError:
        return
    assert encode_room_message(decoded) == data  # what decodes is exactly one message


@given(st.one_of(updates, awareness), st.data())
def test_room_decoder_rejects_mutations_of_valid_messages(message, data: st.DataObject) -> None:
    wire = bytearray(encode_room_message(message))
    pos = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip":
        wire[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    elif how == "truncate":
        del wire[pos:]
    else:
        wire += data.draw(st.binary(min_size=1, max_size=4))
    try:
        decode_room_message(bytes(wire))
    except WireError:
        pass


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x01",
        b"\x01\x03",
        b"\x01\x01" + b"\xff" * 11,
        b"\x01\x01\x05ab",
        b"\x01\x01\x80\x00" + b"\x00" * 6,
        b"\x01\x01\x00\x00\x00\x00\x00\x00\x00" + b"\x00",
    ],
    ids=["empty", "version", "kind", "long varint", "truncated", "overlong", "trailing"],
)
def test_room_decoder_rejects(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_room_message(data)


def test_encoder_refuses_ids_outside_64_bits() -> None:
    with pytest.raises(ValueError):
        encode_room_message(RemoteUpdate("n", "o", "d", 2**63, 0, b"", "a"))


@given(frame_lists(), texts)
def test_frames_round_trip(org_frames: tuple[str, list[Frame]], origin: str) -> None:
    org, frames = org_frames
    assert decode_frames(encode_frames(origin, org, frames)) == (origin, org, frames)


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_frames_decoder_only_raises_wire_error_on_bytes(data: bytes) -> None:
    try:
        decode_frames(data)
    except WireError:
        pass


@given(json_values)
@settings(max_examples=300)
def test_frames_decoder_only_raises_wire_error_on_json(value) -> None:
    body = {"v": 1, "origin": "n", "org": "o", "frames": [value]}
    for candidate in (value, body):
        try:
            decode_frames(json.dumps(candidate).encode())
        except WireError:
            pass


@pytest.mark.parametrize(
    "body",
    [
        '{"v":1,"origin":"n","org":"o","frames":[{"sid":1,"t":"a","id":"b","op":"c",'
        '"p":{"x":NaN},"who":null,"at":0,"ctx":{}}]}',
        '{"v":1,"origin":"n","org":"o","frames":[{"sid":1,"t":"a","id":"b","op":"c",'
        '"p":{"x":1e999},"who":null,"at":0,"ctx":{}}]}',
        '{"v":true,"origin":"n","org":"o","frames":[]}',
        '{"v":1,"origin":"n","org":"o","frames":[{"sid":true,"t":"a","id":"b","op":"c",'
        '"p":{},"who":null,"at":0,"ctx":{}}]}',
        '{"v":1,"origin":"n","org":"o","frames":[{"sid":2,"t":"a","id":"b","op":"c",'
        '"p":{},"who":null,"at":0,"ctx":{}},{"sid":2,"t":"a","id":"b","op":"c",'
        '"p":{},"who":null,"at":0,"ctx":{}}]}',
        "[" * 100_000,
    ],
    ids=["nan", "overflow", "bool version", "bool sid", "sid order", "deep"],
)
def test_frames_decoder_rejects(body: str) -> None:
    with pytest.raises(WireError):
        decode_frames(body.encode())


@given(texts, texts, texts, texts)
def test_doc_channels_are_injective(org1: str, name1: str, org2: str, name2: str) -> None:
    same = doc_channel("p", org1, name1) == doc_channel("p", org2, name2)
    assert same == ((org1, name1) == (org2, name2))


def test_channel_and_key_names() -> None:
    assert doc_channel("crdt-sync", "acme", "notes/a:b") == b"crdt-sync:doc:acme:notes%2Fa%3Ab"
    assert lease_key("crdt-sync", "node:1") == b"crdt-sync:node:node%3A1"
