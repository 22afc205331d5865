"""The frame bus across nodes on Redis pub/sub (see :mod:`rooms.frame_bus`).

Every node publishes the frames it committed on one channel, ``{prefix}:frames``
(the org is in the message, :func:`rooms.redis_wire.encode_frames`), and delivers
everyone's through one :class:`~rooms.frame_sequencer.FrameSequencer`, which orders
each org's frames by sid and reads gaps from the store.

Own frames are delivered locally at once (they go into the sequencer when
published) and dropped when they come back from Redis (by origin). So a node's own
subscribers see its commits with no round trip and keep seeing them while Redis is
down; the sequencer's sid dedupe would catch the echo too, but dropping it by origin
saves decoding it. Frames of other nodes committed during an outage show up as gaps
(read from the store when the next frame arrives), and when Redis is back every org
the bus knows is read from the store (:meth:`FrameSequencer.resync`).
"""

from __future__ import annotations

import logging

from persistence.store import Frame

from .frame_bus import Deliver
from .frame_sequencer import FrameSequencer, ReadSince
from .redis_link import Backoff, LinkCounters, RedisLink
from .redis_wire import WireError, decode_frames, encode_frames, frames_channel

log = logging.getLogger(__name__)


class RedisFrameBus(LinkCounters):
    """Args:
    url: The Redis URL.
    node_id: This node's id (in every message; own messages are dropped on arrival).
    read_since: The store's committed frames of an org after a sid, in sid order.
    prefix: Of the channel (tests use a unique one).
    gap_wait: How long a gap stays open before the store is read.
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        read_since: ReadSince,
        *,
        prefix: str = "crdt-sync",
        gap_wait: float = 0.2,
        backoff: Backoff | None = None,
        max_queue: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self.prefix = prefix
        self._channel = frames_channel(prefix)
        self._subscribers: list[Deliver] = []
        self.sequencer = FrameSequencer(read_since, self._fan_out, gap_wait=gap_wait)
        self._link = RedisLink(
            url,
            name="frame bus",
            on_message=self._on_message,
            on_resumed=self._resumed,
            backoff=backoff,
            max_queue=max_queue,
        )
        #: Messages from other nodes handed to the sequencer; own echoes; undecodable.
        self.received = 0
        self.own = 0
        self.malformed = 0
        self.unpublishable = 0

    async def start(self) -> None:
        # Subscribed before the first session starts: every session listens on it.
        await self._link.subscribe(self._channel)
        await self._link.start()

    async def close(self) -> None:
        await self._link.close()
        await self.sequencer.close()

    def subscribe(self, deliver: Deliver) -> None:
        self._subscribers.append(deliver)

    def publish(self, org: str, frames: list[Frame]) -> None:
        if not frames:
            return
        self.sequencer.push(org, frames)
        try:
            message = encode_frames(self.node_id, org, frames)
        except (TypeError, ValueError):  # not JSON (the store holds none such)
            log.exception("org=%s: frames %d..%d not published", org, frames[0].sid, frames[-1].sid)
            self.unpublishable += 1
            return  # the other nodes read them from the store at the next frame
        self._link.publish(self._channel, message)

    def follow(self, org: str, since: int) -> None:
        self.sequencer.follow(org, since)

    def health(self) -> str | None:
        return self._link.health()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        try:
            origin, org, frames = decode_frames(data)
        except WireError as exc:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                log.warning("frame bus: dropped a message that is not ours (%s)", exc)
            return
        if origin == self.node_id:
            self.own += 1
            return
        self.received += 1
        self.sequencer.push(org, frames)

    def _resumed(self) -> None:
        self.sequencer.resync(None)

    def _fan_out(self, frames: list[Frame]) -> None:
        for deliver in list(self._subscribers):
            try:
                deliver(frames)
            except Exception:
                log.exception("frame bus: a subscriber failed on %d frames", len(frames))
