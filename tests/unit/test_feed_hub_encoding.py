"""A FeedHub subscriber whose frames cannot be sent is closed with 1011 (it resumes from
its last sid) instead of silently missing them. (The encoders themselves are total:
tests/unit/test_frame_wire.py.)"""

from __future__ import annotations

import anyio
import pytest

from persistence.store import Frame
from tests.unit.test_feed_hub import delivered, frame, running_feed, sids

pytestmark = pytest.mark.anyio


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
