"""Frames this node commits, published on the frame bus in queue order, each commit once.

The store returns the frames of a write with its commit (an append's
:class:`~persistence.store.Committed`, :meth:`~persistence.store.Store.log_frames`'
list) and calls nobody: whoever queued the write publishes them. The SQLite store
numbers each org's frames in queue order, so publishing in queue order is publishing
in sid order, which the :class:`~rooms.frame_bus.FrameBus` promises its subscribers.

Publishing from each commit's done-callback alone is not enough: an append that waited
for room in the writer queue returns its commit only after it was admitted, and by then
the commit may be done, with the callbacks of later writes of the same batch already
scheduled; a callback added late would then publish its frames after later sids (and
the feed's subscribers, already past them, would drop them). So a write takes its place
(:meth:`FramePublisher.reserve`) when it is queued, and the frames of a commit are
published once every write queued before it has been published (or has failed).

Batching: the writes of one group commit complete together; their frames go out as
one publication per org (one message per subscriber, not one per write). The drain
runs once per event-loop iteration in which a commit completed, after every
done-callback of that iteration (measured: 1 frame per message made fan-out to 104
subscribers 3.8x slower than the store's former commit listener, which batched so).

Ordering rule owned here: *a commit's frames reach the bus in queue order, once*. It
sits with the writers (the :mod:`~crdt_sync.records.coalescer` and the mutation
engine), not with the frame stream: a write's place must be taken where it is queued,
inside the coalescer's no-yield section, and the frame stream
(:mod:`crdt_sync.sync_stream`, the :class:`~rooms.feed_hub.FeedHub`) only ever reads
the bus, so that a subscriber cannot tell which node committed a frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from persistence.store import Commit, Frame
from rooms.frame_bus import FrameBus

log = logging.getLogger(__name__)


class Slot:
    """The place of one write in the queue: its frames once its commit is over."""

    __slots__ = ("done", "frames")

    def __init__(self) -> None:
        self.done = False
        self.frames: list[Frame] = []


class FramePublisher:
    """Publishes the frames of this node's commits on ``bus``, in queue order.

    Args:
        bus: Where committed frames go.
        on_published: Called with each commit's frames before they are published
            (counters, the frame log's trim); its failure is counted like a publish's.
    """

    def __init__(
        self, bus: FrameBus, on_published: Callable[[list[Frame]], None] | None = None
    ) -> None:
        self.bus = bus
        self._on_published = on_published
        self._slots: deque[Slot] = deque()
        self._drain_scheduled = False
        #: Publications that raised (a subscriber's bug): counted and logged, never
        #: allowed to stop the ones behind them.
        self.failures = 0
        #: Frames of this node's commits handed on (``crdt_sync_frames``), whether or
        #: not their publication then failed.
        self.frames_logged = 0

    def reserve(self) -> Slot:
        """Take the next place in queue order, for a write about to be queued (without
        yielding to the event loop in between): :meth:`attach` its commit, or
        :meth:`drop` the place if nothing was queued."""
        slot = Slot()
        self._slots.append(slot)
        return slot

    def attach(
        self, slot: Slot, commit: Commit[Any], frames_of: Callable[[Any], list[Frame]]
    ) -> None:
        """The write at ``slot`` was queued as ``commit``; ``frames_of(result)`` are the
        frames it committed. A commit that fails publishes nothing."""

        def done(fut: Commit[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                slot.frames = frames_of(fut.result())
            slot.done = True
            self._drain_soon()

        commit.add_done_callback(done)

    def drop(self, slot: Slot) -> None:
        """Nothing was queued at ``slot`` (the write was refused before it was queued)."""
        slot.done = True
        self._drain_soon()

    def _drain_soon(self) -> None:
        if self._drain_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): drain now
            self._drain()
            return
        self._drain_scheduled = True
        loop.call_soon(self._drain)

    def publish_on_commit(
        self, commit: Commit[Any], frames_of: Callable[[Any], list[Frame]]
    ) -> None:
        """:meth:`reserve` and :meth:`attach` at once: ``commit`` was just queued."""
        self.attach(self.reserve(), commit, frames_of)

    def _drain(self) -> None:
        """Publish the frames of every leading finished write, one publication per run
        of one org's frames (in queue order)."""
        self._drain_scheduled = False
        slots = self._slots
        run: list[Frame] = []
        while slots and slots[0].done:
            for frame in slots.popleft().frames:
                if run and run[-1].org != frame.org:
                    self._publish(run)
                    run = []
                run.append(frame)
        if run:
            self._publish(run)

    def _publish(self, frames: list[Frame]) -> None:
        self.frames_logged += len(frames)
        steps: list[Callable[[], None]] = [lambda: self.bus.publish(frames[0].org, frames)]
        if self._on_published is not None:
            on_published = self._on_published
            steps.insert(0, lambda: on_published(frames))
        for step in steps:
            try:
                step()
            except Exception:
                # Writers must not hang on a subscriber's bug, and the frames behind
                # these must still go out: counted (metrics) and logged, once each.
                self.failures += 1
                log.exception(
                    "frames org=%r sids %d..%d: publishing failed",
                    frames[0].org,
                    frames[0].sid,
                    frames[-1].sid,
                )
