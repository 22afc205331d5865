"""The SyncFrame wire (crdt_sync.records.wire): the frame shape, the WebSocket and SSE
encodings, and encoders that are total (a lone surrogate is escaped, never an error)."""

from __future__ import annotations

import json
from typing import Any

from crdt_sync.records.wire import (
    encode_json_array,
    encode_json_event,
    encode_sse,
    encode_sse_event,
    frame_dict,
    tx_runs,
)
from persistence.store import Frame

ORG = "default"


def frame(sid: int, t: str = "issue", id: str = "1", *, org: str = ORG, **ctx: Any) -> Frame:
    return Frame(sid, org, t, id, "u", {"n": sid}, "alice", 1000 + sid, ctx)


def test_frame_dict_shape_always_has_client_tx_id() -> None:
    plain = Frame(7, ORG, "issue", "1/x", "i", {"title": "ü"}, None, 123, {})
    assert frame_dict(plain) == {
        "sid": 7,
        "t": "issue",
        "id": "1/x",
        "op": "i",
        "p": {"title": "ü"},
        "who": None,
        "at": 123,
        "ctx": {"client_tx_id": None},
    }
    with_tx = Frame(8, ORG, "issue", "1", "d", {}, "bob", 5, {"client_tx_id": "tx", "x": 1})
    d = frame_dict(with_tx)
    assert list(d) == ["sid", "t", "id", "op", "p", "who", "at", "ctx"]
    assert d["ctx"] == {"client_tx_id": "tx", "x": 1}
    extra = Frame(9, ORG, "issue", "1", "u", {}, "bob", 5, {"base_sid": 3})
    assert frame_dict(extra)["ctx"] == {"client_tx_id": None, "base_sid": 3}
    assert "org" not in d


def test_encode_json_array_is_compact_utf8() -> None:
    message = encode_json_array([frame(1), frame(2)])
    assert message.startswith(b'[{"sid":1,')
    assert [f["sid"] for f in json.loads(message)] == [1, 2]
    unicode = Frame(3, ORG, "t", "1", "u", {"s": "ü😀"}, None, 1, {})
    assert "ü😀".encode() in encode_json_array([unicode])


def test_encode_sse_gives_one_event_per_frame_with_its_sid_as_id() -> None:
    frames = [frame(41, client_tx_id="tx"), frame(42)]
    text = encode_sse(frames).decode("utf-8")
    events = text.split("\n\n")
    assert events[-1] == "" and len(events) == 3
    for event, f in zip(events[:2], frames, strict=True):
        id_line, data_line = event.split("\n")
        assert id_line == f"id: {f.sid}"
        assert data_line.startswith("data: ")
        assert json.loads(data_line.removeprefix("data: ")) == frame_dict(f)


def test_encoders_escape_a_lone_surrogate_instead_of_failing() -> None:
    lone = Frame(1, ORG, "s", "1", "u", {"a": "x\ud800"}, "alice", 1, {"client_id": "\udfff"})
    (wire,) = json.loads(encode_json_array([lone]))
    assert wire["p"] == {"a": "x\ud800"} and wire["ctx"]["client_id"] == "\udfff"
    event = encode_sse([lone]).decode("utf-8")
    assert event.startswith("id: 1\ndata: ") and "\\ud800" in event
    assert json.loads(encode_json_event({"type": "presence", "s": "\ud800"}))["s"] == "\ud800"
    assert "\\ud800" in encode_sse_event({"type": "presence", "s": "\ud800"}).decode("utf-8")
    plain = Frame(2, ORG, "s", "1", "u", {"a": "é"}, "alice", 1, {})
    assert '"a":"é"' in encode_json_array([plain]).decode("utf-8")  # raw UTF-8 when valid


def test_the_tx_of_a_mutation_request_is_a_field_of_the_frame() -> None:
    d = frame_dict(frame(3, client_tx_id="k", tx="abc"))
    assert d["tx"] == "abc" and d["ctx"] == {"client_tx_id": "k"}
    assert "tx" not in frame_dict(frame(4))


def test_tx_runs_keep_a_requests_frames_and_what_lies_between_together() -> None:
    frames = [
        frame(1),
        frame(2, tx="a"),
        frame(3),  # a pending edit framed inside the request's commit
        frame(4, tx="a"),
        frame(5, tx="b"),  # a request of one frame
        frame(6),
    ]
    runs = [([f.sid for f in run], tx) for run, tx in tx_runs(frames)]
    assert runs == [([1], None), ([2, 3, 4], "a"), ([5], None), ([6], None)]


def test_sse_sends_a_requests_frames_as_one_tx_event() -> None:
    text = encode_sse([frame(1), frame(2, tx="a"), frame(3, tx="a"), frame(4, tx="b")]).decode()
    events = [block for block in text.split("\n\n") if block]
    assert len(events) == 3
    assert events[0].startswith("id: 1\ndata: ")
    head, data = events[1].split("\ndata: ")
    assert head == "id: 3\nevent: tx"
    body = json.loads(data)
    assert body["tx"] == "a" and [f["sid"] for f in body["frames"]] == [2, 3]
    assert events[2].startswith("id: 4\ndata: ")
    assert json.loads(events[2].split("data: ")[1])["tx"] == "b"
