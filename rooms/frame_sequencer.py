"""Committed frames in, each org's frames out in sid order, each once, without gaps.

Frames reach a node out of order (a pooled store reports commits as they finish;
Redis carries other nodes' commits), twice (a node's own frames, a store read that
overlaps the bus) or not at all (pub/sub drops messages; an outage). The
:class:`FrameSequencer` puts them back in order per org:

* The first frames seen for an org set its starting point: delivery starts at the
  lowest sid of that batch (a subscriber reads what came before from the store
  itself; :meth:`FrameSequencer.follow` sets the point explicitly instead).
* A frame at or below the last delivered sid, or already buffered, is a duplicate.
* A frame past a gap is buffered; if the gap is still open after ``gap_wait`` s the
  missing frames are read from the store (``read_since(org, last_delivered)``,
  which returns committed frames with a greater sid, in sid order, perhaps only a
  page of them). The store is the source of truth: a gap it cannot fill either after
  ``max_reads`` reads (the sids were trimmed, or never committed) is skipped up to
  the first frame it holds, with a warning; frames it does not hold at all (a
  forged or broken message) are dropped, with an error.
* :meth:`FrameSequencer.resync` reads the store until it has nothing newer (after an
  outage of the bus, when frames may have been lost without a later frame showing
  the gap).

Everything runs on the event loop; ``deliver`` is called there, never concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from persistence.store import Frame, StoreClosedError

log = logging.getLogger(__name__)

ReadSince = Callable[[str, int], Awaitable[list[Frame]]]
Deliver = Callable[[list[Frame]], None]

#: Longest pause between two store reads while the store fails.
MAX_RETRY_WAIT = 5.0


@dataclass(slots=True)
class _Org:
    last: int  # last delivered sid
    target: int  # highest sid known to exist
    pending: dict[int, Frame] = field(default_factory=dict)
    want_read: bool = False  # resync asked: read until the store has nothing newer
    repair: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # cuts a wait short


class FrameSequencer:
    """Args:
    read_since: ``await read_since(org, sid)``: the committed frames of ``org`` after
        ``sid``, in sid order (``Store.frames_since`` or a page of it).
    deliver: Called with each org's frames in sid order.
    gap_wait: How long a gap may stay open before the store is read.
    max_reads: Store reads without progress before a gap is skipped.
    max_pending: Frames buffered per org behind a gap; past it, newer frames are
        not kept (they are read from the store when the gap closes).
    """

    def __init__(
        self,
        read_since: ReadSince,
        deliver: Deliver,
        *,
        gap_wait: float = 0.2,
        max_reads: int = 3,
        max_pending: int = 10_000,
    ) -> None:
        self._read_since = read_since
        self._deliver = deliver
        self.gap_wait = gap_wait
        self.max_reads = max_reads
        self.max_pending = max_pending
        self._orgs: dict[str, _Org] = {}
        self._closed = False
        #: Frames delivered; duplicates dropped; frames read from the store; sids skipped
        #: (not in the store); frames dropped because the store did not have them.
        self.delivered = 0
        self.duplicates = 0
        self.read = 0
        self.skipped = 0
        self.unconfirmed = 0

    def last_delivered(self, org: str) -> int | None:
        state = self._orgs.get(org)
        return None if state is None else state.last

    @property
    def orgs(self) -> list[str]:
        return list(self._orgs)

    def follow(self, org: str, since: int) -> None:
        """Deliver ``org``'s frames after ``since`` (if the org has no starting point
        yet): for a subscriber that has read the store up to ``since``."""
        if org in self._orgs:
            return
        self._orgs[org] = _Org(last=since, target=since)

    def push(self, org: str, frames: list[Frame]) -> None:
        """Frames of ``org`` that were committed (any order, duplicates allowed)."""
        if self._closed or not frames:
            return
        state = self._orgs.get(org)
        if state is None:
            first = min(f.sid for f in frames) - 1
            state = self._orgs[org] = _Org(last=first, target=first)
        self._accept(org, state, frames)

    def resync(self, org: str | None = None) -> None:
        """Read ``org``'s frames (every org's, for ``None``) from the store until it has
        nothing newer, right away."""
        if self._closed:
            return
        for name in [org] if org is not None else list(self._orgs):
            state = self._orgs.get(name)
            if state is None:
                continue  # no starting point: nobody follows it yet
            state.want_read = True
            state.wake.set()
            self._ensure_repair(name, state, wait=0.0)

    async def close(self) -> None:
        self._closed = True
        tasks = [s.repair for s in self._orgs.values() if s.repair is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- internals ---------------------------------------------------------------

    def _accept(self, org: str, state: _Org, frames: list[Frame]) -> bool:
        """Buffer, deliver what is in order; whether anything new was delivered."""
        for frame in frames:
            if frame.org != org:
                log.error("org=%s: dropped frame %d of org %r", org, frame.sid, frame.org)
                continue
            if frame.sid <= state.last or frame.sid in state.pending:
                self.duplicates += 1
                continue
            state.pending[frame.sid] = frame
            state.target = max(state.target, frame.sid)
        delivered = self._drain(org, state)
        if len(state.pending) > self.max_pending:
            for sid in sorted(state.pending)[self.max_pending :]:
                del state.pending[sid]  # still counted in target: read back later
        if state.target > state.last:
            self._ensure_repair(org, state, wait=self.gap_wait)
        return delivered

    def _drain(self, org: str, state: _Org) -> bool:
        out: list[Frame] = []
        while (frame := state.pending.pop(state.last + 1, None)) is not None:
            out.append(frame)
            state.last = frame.sid
        if out:
            self.delivered += len(out)
            try:
                self._deliver(out)
            except Exception:
                log.exception("org=%s: delivering frames %d..%d failed", org, *_span(out))
        return bool(out)

    def _ensure_repair(self, org: str, state: _Org, *, wait: float) -> None:
        if state.repair is None and not self._closed:
            state.repair = asyncio.create_task(self._repair(org, state, wait), name=f"gap {org}")

    async def _repair(self, org: str, state: _Org, wait: float) -> None:
        try:
            await self._pause(state, wait)
            fruitless = failures = 0
            while not self._closed and (state.target > state.last or state.want_read):
                resyncing, state.want_read = state.want_read, False
                try:
                    frames = await self._read_since(org, state.last)
                except StoreClosedError:
                    return  # the node is shutting down: nothing will be read any more
                except Exception as exc:
                    state.want_read = state.want_read or resyncing
                    failures += 1
                    if failures == 1:
                        log.warning(
                            "org=%s: reading frames after %d failed, retrying: %r",
                            org,
                            state.last,
                            exc,
                        )
                    await self._pause(state, min(MAX_RETRY_WAIT, self.gap_wait * 2**failures))
                    continue
                failures = 0
                self.read += len(frames)
                fresh = [f for f in frames if f.sid > state.last]
                if fresh and resyncing:
                    state.want_read = True  # read on until the store has nothing newer
                if self._accept(org, state, fresh):
                    fruitless = 0
                    continue  # perhaps only a page: read on
                if state.target <= state.last:
                    continue
                fruitless += 1  # the gap is still open and the store did not fill it
                if fruitless >= self.max_reads:
                    self._skip(org, state, fresh)
                    fruitless = 0
                    continue
                await self._pause(state, self.gap_wait)
        finally:
            state.repair = None

    @staticmethod
    async def _pause(state: _Org, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`resync` asks for a read now."""
        if state.wake.is_set():
            state.wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), seconds)
        state.wake.clear()

    def _skip(self, org: str, state: _Org, stored: list[Frame]) -> None:
        """The gap stayed open through ``max_reads`` reads: believe the store. If it
        holds frames past the gap, the missing sids are not there (trimmed, or never
        committed): go on from its first. If it holds none, the buffered frames are not
        in the store either: they are dropped, never delivered."""
        if stored:
            resume = min(f.sid for f in stored) - 1
            log.warning(
                "org=%s: frames %d..%d are not in the store after %d reads; skipping them",
                org,
                state.last + 1,
                resume,
                self.max_reads,
            )
            self.skipped += resume - state.last
            state.last = resume
            self._drain(org, state)
            return
        log.error(
            "org=%s: %d frames after %d (up to %d) are not in the store; dropped",
            org,
            len(state.pending),
            state.last,
            state.target,
        )
        self.unconfirmed += len(state.pending)
        state.pending.clear()
        state.target = state.last


def _span(frames: list[Frame]) -> tuple[int, int]:
    return frames[0].sid, frames[-1].sid
