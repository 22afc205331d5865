"""Fan-out of committed SyncFrames to the frame subscribers of this node.

The node's :class:`~rooms.frame_bus.FrameBus` calls :meth:`FeedHub.publish` with the
frames of every commit, in sid order, on the event loop. Each subscriber (a WebSocket
or SSE client of the frame feed) has a bounded :class:`~rooms.connection.Connection`
queue, so a subscriber that stops reading is closed with 4429 and never slows anybody
down. The hub does not know the SyncFrame wire shape: each subscriber carries the
encoders its endpoint gave it (``crdt_sync.records.wire``).

Catch-up without gaps or duplicates: a new subscriber is registered *before* it
reads the frames it missed from the store, and buffers what is published
meanwhile; :meth:`FeedSubscriber.go_live` then sends the buffered frames past the
last one it read. Because the hub sees frames only after they are committed, every
frame is either in that read or in the buffer, and the sid filter drops the overlap.
Frames trimmed from the log before the subscriber read them are never skipped
silently: the reader sends :meth:`FeedSubscriber.reset` instead (see
``crdt_sync.sync_stream.catch_up``).

Visibility: a subscriber only receives frames of records its grant covers (its
``docs`` filter, see :class:`DocFilter`), live and in catch-up. Its cursor
(:attr:`FeedSubscriber.last_sid`) still advances over the frames it may not see,
as it catches up, so catch-up pages over them; the overlap logic above is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

from persistence.store import Frame

from .close_codes import CloseCode
from .connection import Connection

log = logging.getLogger(__name__)

CLOSE_INTERNAL_ERROR = CloseCode.INTERNAL_ERROR

#: Frames a subscriber buffers while it catches up; past it, it reads the store again.
MAX_BUFFERED = 10_000

#: How a subscriber's frames are put on its wire, and its other events (presence):
#: given by the feed's endpoints (``crdt_sync.records.wire``), never chosen here.
Encoder = Callable[[list[Frame]], bytes]
EventEncoder = Callable[[dict[str, Any]], bytes]


class DocFilter(Hashable, Protocol):
    """Which records a subscriber may see (``crdt_sync.auth.Grant`` is one): hashable,
    so that subscribers with equal filters share one encoding of each publish."""

    def covers(self, doc_name: str) -> bool: ...


class FeedSubscriber:
    """One client of the frame feed.

    Args:
        conn: Its bounded send queue and transport.
        org: Its tenant.
        t: Only frames of this record type, or all.
        since: The last sid it has.
        encode: How frames are put on its wire.
        encode_event: How other events (presence) are put on its wire.
        docs: The records it may see (``None``: every record of its org). May be
            replaced while it runs (a token renewed in band).
    """

    def __init__(
        self,
        conn: Connection,
        org: str,
        *,
        t: str | None,
        since: int,
        encode: Encoder,
        encode_event: EventEncoder,
        docs: DocFilter | None = None,
    ) -> None:
        self.conn = conn
        self.org = org
        self.t = t
        self.last_sid = since
        self.encode = encode
        self.encode_event = encode_event
        self._buffer: list[Frame] | None = []
        self.overflowed = False
        self.watching: set[tuple[str, str]] = set()
        self.all_presence = False
        self.docs = docs

    @property
    def live(self) -> bool:
        return self._buffer is None

    def covers(self, record: tuple[str, str]) -> bool:
        """Whether its grant covers record ``(t, id)`` (frames and presence alike)."""
        return self.docs is None or self.docs.covers(f"{record[0]}/{record[1]}")

    def sees(self, frame: Frame) -> bool:
        """Whether ``frame`` is of its type and of a record it may see (sid aside)."""
        return (self.t is None or frame.t == self.t) and self.covers((frame.t, frame.id))

    def wants(self, frame: Frame) -> bool:
        return frame.sid > self.last_sid and self.sees(frame)

    def send(self, frames: list[Frame], message: bytes | None = None) -> None:
        """Queue ``frames`` (already filtered, in order), encoded unless given."""
        if not frames:
            return
        self.conn.enqueue(message if message is not None else self.encode(frames))
        self.last_sid = frames[-1].sid

    def deliver(self, frames: list[Frame]) -> None:
        """Queue those of ``frames`` (sid order, all newer than :attr:`last_sid`) it may
        see, and move its cursor past all of them, the invisible ones included."""
        if not frames:
            return
        self.send([f for f in frames if self.sees(f)])
        self.last_sid = max(self.last_sid, frames[-1].sid)

    def reset(self, event: dict[str, Any], code: int, reason: str) -> None:
        """Frames after :attr:`last_sid` are gone: tell the client (``event``, the body
        a ``delta`` 410 carries, with its bootstrap cursor), then close with ``code``.

        Nothing is sent after it: what the client received is gap-free, then the reset.
        """
        self._buffer = []
        self.overflowed = False
        self.conn.close_after(self.encode_event(event), code, reason)

    def caught_up_to(self, sid: int) -> None:
        """Everything up to ``sid`` was read (frames of other types included)."""
        self.last_sid = max(self.last_sid, sid)

    def go_live(self) -> bool:
        """Send what was buffered during catch-up and receive live frames from now on.

        Returns:
            ``False`` if the buffer overflowed: read the store again, then retry.
        """
        if self.overflowed:
            self.overflowed = False
            self._buffer = []
            return False
        buffered, self._buffer = self._buffer or [], None
        self.deliver([f for f in buffered if f.sid > self.last_sid])
        return True

    def _buffer_frames(self, frames: Iterable[Frame]) -> None:
        assert self._buffer is not None
        if self.overflowed:
            return
        self._buffer.extend(frames)
        if len(self._buffer) > MAX_BUFFERED:
            self._buffer = []
            self.overflowed = True


class FeedHub:
    """The frame subscribers of this node, by tenant."""

    def __init__(self) -> None:
        self._subs: dict[str, set[FeedSubscriber]] = {}
        self.send_failures = 0  # subscribers closed because their frames failed to encode

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    def subscribe(self, sub: FeedSubscriber) -> None:
        self._subs.setdefault(sub.org, set()).add(sub)

    def unsubscribe(self, sub: FeedSubscriber) -> None:
        subs = self._subs.get(sub.org)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.org]

    def close_all(self, code: int, reason: str) -> None:
        """Close every subscriber (shutdown)."""
        for subs in self._subs.values():
            for sub in list(subs):
                sub.conn.close(code, reason)

    def publish(self, frames: list[Frame]) -> None:
        """Deliver committed ``frames`` (sid order) to every subscriber that wants them."""
        by_org: dict[str, list[Frame]] = {}
        for frame in frames:
            by_org.setdefault(frame.org, []).append(frame)
        for org, org_frames in by_org.items():
            subs = self._subs.get(org)
            if not subs:
                continue
            # Subscribers with the same encoder and filters get the very same bytes.
            encoded: dict[tuple[Encoder, str | None, Hashable], tuple[list[Frame], bytes]] = {}
            for sub in list(subs):
                if not sub.live:
                    sub._buffer_frames(org_frames)
                    continue
                key = (sub.encode, sub.t, sub.docs)
                try:
                    cached = encoded.get(key)
                    if cached is None:
                        wanted = [f for f in org_frames if sub.sees(f)]
                        cached = encoded[key] = (wanted, sub.encode(wanted) if wanted else b"")
                    wanted, message = cached
                    if wanted and wanted[0].sid > sub.last_sid:
                        sub.send(wanted, message)
                    else:  # it read some of these itself: send only the rest
                        sub.send([f for f in wanted if sub.wants(f)])
                except Exception:
                    # Never a silent gap: it is closed and resumes from its last sid.
                    log.exception(
                        "conn=%s frames %d..%d could not be sent, closing with 1011",
                        sub.conn.id,
                        org_frames[0].sid,
                        org_frames[-1].sid,
                    )
                    self.send_failures += 1
                    sub.conn.close(CLOSE_INTERNAL_ERROR, "frames could not be encoded")

    def publish_event(self, org: str, record: tuple[str, str], event: dict[str, Any]) -> int:
        """Send ``event`` (presence) to the subscribers watching ``record``."""
        sent = 0
        encoded: dict[EventEncoder, bytes] = {}
        for sub in list(self._subs.get(org, ())):
            watched = sub.all_presence or record in sub.watching
            if sub.live and watched and sub.covers(record):
                message = encoded.get(sub.encode_event)
                if message is None:
                    message = encoded[sub.encode_event] = sub.encode_event(event)
                if sub.conn.enqueue(message):
                    sent += 1
        return sent
