"""FeedHub encoders are total, and a subscriber whose frames cannot be sent is closed
with 1011 (it resumes from its last sid) instead of silently missing them."""

from __future__ import annotations

import json

import anyio
import pytest

from persistence.store import Frame
from rooms.feed_hub import encode_json_array, encode_json_event, encode_sse, encode_sse_event
from tests.unit.test_feed_hub import ORG, delivered, frame, running_feed, sids

pytestmark = pytest.mark.anyio


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


async def test_a_subscriber_whose_frames_cannot_be_encoded_is_closed_not_skipped() -> None:
    def broken(frames: list[Frame]) -> bytes:
        raise ValueError("cannot encode")

    async with running_feed() as feed:
        bad, bad_socket = feed.subscribe(encode=broken)
        good, good_socket = feed.subscribe()
        feed.hub.publish([frame(1), frame(2)])
        await delivered(good)
        with anyio.fail_after(5):
            while bad_socket.closed is None:
                await anyio.sleep(0.001)
    assert bad_socket.closed == (1011, "frames could not be encoded")
    assert bad.last_sid == 0  # it resumes from what it really has
    assert sids(good_socket) == [[1, 2]]
    assert feed.hub.send_failures == 1
