"""The coalescer: edits of record docs turned into frame drafts queued in the store.

:class:`Coalescer` is the records' side of the rooms'
:class:`~rooms.listener.RoomListener`. For every loaded record room it keeps the
*baseline*: the projection its last frame left behind (the row of ``records``). A
change marks the record pending; after ``--frame-coalesce-ms`` (or at once when another
actor writes, a mutation comes, or the room unloads) the projection is compared with
the baseline and the difference is logged as one frame.

Ordering rule owned here: *when a record is framed*. Drafting a frame (project, diff,
move the baseline) and queueing it in the store never yield to the event loop, and the
store commits in queue order, so baselines and sids advance together. Every frame of a
record is drafted here: coalesced edits, the pending change a mutation sets apart
(:meth:`Coalescer.frame_pending`), a mutation's own change (:class:`ChangeFrames`,
drafted inside :meth:`~rooms.room.Room.change`) and a delete
(:meth:`Coalescer.queue_delete`). The frames each commit returns are published on the
node's :class:`~rooms.frame_bus.FrameBus` in queue order, so in sid order, each commit
once: see :mod:`crdt_sync.records.publisher`.

A draft of this node's own change leaves ``update_id`` to the store (``None``: the
newest update of the doc this node appended, at its place in the queue, or the update
it rides on): this node's log is in queue order. A draft of what only *other* nodes
changed (:attr:`TrackedRecord.observed`) carries this node's view of the doc instead,
the newest update id up to which it holds every update
(:attr:`rooms.replica.Replica.last`): the store drops it if the record was framed
from a newer view meanwhile (:func:`persistence.framing.settle`), so a node that lags
behind never moves a record back. Every node holding a record drafts what it sees,
so a change is framed even if the node it came through dies before framing it; the
store logs it once. A node's own and observed changes are never merged in one draft.

Crashes: a record's stored projection remembers the newest update it covers. A room
that loads with a projection different from its stored one (its last frame was lost
to ``kill -9`` inside the coalescing window) emits the difference at once, and at
start-up the coalescer loads every record whose log is ahead of its projection.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio

from persistence import values
from persistence.store import (
    Commit,
    Committed,
    Frame,
    FrameBatch,
    FrameDraft,
    MutationReplayed,
    Store,
    StoreError,
)
from rooms.manager import RoomManager, ShuttingDown
from rooms.room import Origin, Room, RoomLoadError, RoomState, now_ms
from rooms.supervisor import Supervisor

from ..docnames import split_record
from .projection import RootTypes, diff, project, same
from .publisher import FramePublisher, Slot

log = logging.getLogger(__name__)

#: A baseline not read from the store yet.
UNKNOWN: Any = object()


@dataclass(slots=True, eq=False)
class TrackedRecord:
    """What the coalescer knows of one loaded record room."""

    room: Room
    t: str
    id: str
    types: RootTypes = field(default_factory=RootTypes)
    baseline: Any = UNKNOWN  # dict of fields, None (no record) or UNKNOWN
    pending: bool = False
    actor: str | None = None  # who made the pending changes (None: recovered)
    #: The pending change is only what other nodes changed (or what a load found
    #: unframed): drafted with this node's view of the doc (see :meth:`Coalescer._draft`).
    observed: bool = False
    due: float = 0.0
    loading: anyio.Event | None = None
    #: Its frames queued in the store and not committed yet (newest last): a
    #: mutation's ``base_sid`` conflicts are read from the store, which cannot see them.
    uncommitted: list[FrameDraft] = field(default_factory=list)


def _view(room: Room) -> int:
    """The newest update id up to which ``room`` holds every update of its doc."""
    return room.replica.last if room.replica is not None else room.last_update_id


class Coalescer:
    """Frames for every change of a record. See the module docstring.

    Args:
        store: Where frames and projections are logged.
        publisher: Publishes what each commit logged on the node's frame bus.
        coalesce_ms: The coalescing window of Yjs updates.
    """

    def __init__(
        self, store: Store, publisher: FramePublisher, *, coalesce_ms: float = 200
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.coalesce = coalesce_ms / 1000
        self._manager: RoomManager | None = None
        self._records: dict[tuple[str, str], TrackedRecord] = {}
        self._due: deque[TrackedRecord] = deque()
        self._wake = anyio.Event()

    @property
    def manager(self) -> RoomManager:
        if self._manager is None:
            raise RuntimeError("expected STARTED, got NOT STARTED")
        return self._manager

    @property
    def supervisor(self) -> Supervisor:
        return self.manager.supervisor

    async def run(self, manager: RoomManager, task_status: Any = anyio.TASK_STATUS_IGNORED):
        """Flush due records until cancelled; reconcile stale records first.

        Each loop runs under the manager's supervisor: a failure is logged, counted
        and the loop restarted, never left dead while the node serves.
        """
        self._manager = manager
        supervisor = manager.supervisor
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.loop, "frame_flush", self._flush_loop)
            what = "re-framing stale records"
            tg.start_soon(supervisor.task, "reconcile", what, self._reconcile_stale)
            task_status.started()

    # -- RoomListener (records) -----------------------------------------------------

    async def room_loaded(self, room: Room) -> None:
        rec = self.track(room)
        if rec is None:
            return
        await self.ensure_baseline(rec)
        if rec.baseline is None and room.is_empty:
            return
        if rec.baseline is None or not same(rec.baseline, project(room.doc, rec.types)):
            log.info("record %s/%s: stored projection is behind its doc, re-framing", rec.t, rec.id)
            # What the stored doc holds, as of the view it was loaded at.
            self._mark(rec, None, observed=True)

    def room_changing(self, room: Room, actor: str | None, origin: Origin) -> None:
        rec = self._records.get((room.org, room.name))
        if (
            rec is not None
            and rec.room is room
            and rec.pending
            and (rec.actor != actor or rec.observed != (origin is Origin.REMOTE))
        ):
            self._set_apart(rec)

    def room_changed(self, room: Room, actor: str | None, origin: Origin) -> None:
        if origin is Origin.STORE:
            return
        rec = self.track(room)
        if rec is not None:
            self._mark(rec, actor, observed=origin is Origin.REMOTE)

    async def room_unloading(self, room: Room) -> None:
        rec = self._records.get((room.org, room.name))
        if rec is not None and rec.pending:
            await self.flush(rec)

    def room_unloaded(self, room: Room) -> None:
        key = (room.org, room.name)
        rec = self._records.get(key)
        if rec is not None and rec.room is room:
            del self._records[key]
            rec.pending = False

    # -- records -------------------------------------------------------------------

    def track(self, room: Room) -> TrackedRecord | None:
        """The record of ``room`` (tracked from now on), or ``None``: not a record, or
        no longer loaded."""
        key = (room.org, room.name)
        rec = self._records.get(key)
        if rec is not None and rec.room is room:
            return rec
        if room.state is not RoomState.LOADED:
            return None  # deleted or unloaded: nothing of it is framed any more
        split = split_record(room.name)
        if split is None:
            return None
        rec = self._records[key] = TrackedRecord(room, *split, types=RootTypes(room.name))
        return rec

    def tracked(self, org: str, name: str) -> TrackedRecord | None:
        """The tracked record of doc ``name``, if any (check its ``room``: it may be of
        a room of that doc that is not the one the caller holds)."""
        return self._records.get((org, name))

    def is_current(self, rec: TrackedRecord) -> bool:
        """``rec`` is still the record of a loaded room (not of an unloaded one)."""
        return self._records.get((rec.room.org, rec.room.name)) is rec

    async def ensure_baseline(self, rec: TrackedRecord) -> None:
        """Read ``rec``'s baseline from the store unless it is known."""
        while rec.baseline is UNKNOWN:
            if rec.loading is not None:
                await rec.loading.wait()
                continue
            rec.loading = anyio.Event()
            try:
                row = await self.store.get_record(rec.room.org, rec.t, rec.id)
                if rec.baseline is UNKNOWN:
                    rec.baseline = None if row is None else row.fields
            finally:
                rec.loading.set()
                rec.loading = None

    async def flush(self, rec: TrackedRecord) -> None:
        """Frame ``rec``'s pending change now and wait until it is stored."""
        await self.ensure_baseline(rec)
        if rec.pending:
            future = self.queue(rec.room.org, [self._draft(rec)])
            if future is not None:
                await future

    # -- drafting and queueing (no yield) ---------------------------------------------

    def frame_pending(self, rec: TrackedRecord) -> FrameDraft | None:
        """Frame ``rec``'s pending change now, in a batch of its own (a mutation's
        idempotency key must remember the mutation's own sid, not this one's); no
        yield. Returns its draft (``None``: nothing was pending or changed).

        Its baseline must be known (:meth:`ensure_baseline`).
        """
        pending = self._draft(rec) if rec.pending else None
        self.queue(rec.room.org, [pending])
        return pending

    def change_frames(
        self,
        rec: TrackedRecord,
        *,
        who: str,
        ctx: dict[str, Any],
        mutation: tuple[str, dict[str, Any]] | None,
    ) -> ChangeFrames:
        """The frames of a change ``who`` is about to make to ``rec`` with
        :meth:`~rooms.room.Room.change` (see :class:`ChangeFrames`)."""
        return ChangeFrames(self, rec, who=who, ctx=ctx, mutation=mutation)

    def queue_delete(
        self,
        org: str,
        name: str,
        *,
        who: str,
        ctx: dict[str, Any] | None,
        mutation: tuple[str, dict[str, Any]] | None,
    ) -> Commit[list[Frame]]:
        """Queue record doc ``name``'s ``d`` frame, the doc's deletion and a mutation's
        idempotency key in one transaction; no yield."""
        split = split_record(name)
        assert split is not None, f"{name!r} is not a record"
        t, record_id = split
        draft = FrameDraft(
            t=t,
            id=record_id,
            op="d",
            p={},
            who=who,
            at=now_ms(),
            ctx=ctx or {"client_tx_id": None},
            record=None,
        )
        future = self.queue(org, [draft], delete=name, mutation=mutation)
        assert future is not None
        return future

    def queue(
        self,
        org: str,
        drafts: list[FrameDraft | None],
        *,
        mutation: tuple[str, dict[str, Any]] | None = None,
        delete: str | None = None,
    ) -> Commit[list[Frame]] | None:
        """Queue drafts (None: nothing to frame), an idempotency key and a doc deletion
        in the store, in one transaction, in order; no yield. ``None``: nothing to queue.
        What the commit logs is published on the frame bus."""
        frames = tuple(d for d in drafts if d is not None)
        if not frames and mutation is None and delete is None:
            return None
        future = self.store.log_frames(org, FrameBatch(frames, mutation), delete=delete)
        self.publisher.publish_on_commit(future, _logged)
        self._watch(org, frames, future)
        return future

    def _set_apart(self, rec: TrackedRecord) -> None:
        """Before a change by another actor is applied: frame the pending one now, so
        that neither is credited to the other's ``who``."""
        if rec.baseline is not UNKNOWN:
            self.queue(rec.room.org, [self._draft(rec)])
        else:
            # Without a baseline it cannot be framed yet: the merged change is
            # credited to nobody rather than to the wrong actor.
            rec.actor = None

    def _mark(self, rec: TrackedRecord, actor: str | None, *, observed: bool = False) -> None:
        """Note a change by ``actor``, already applied to the doc (see :meth:`room_changing`);
        ``observed``: another node's (see :attr:`TrackedRecord.observed`)."""
        if rec.pending:
            if rec.actor != actor:
                rec.actor = None  # merged with a change of someone else (or a recovery)
            if rec.observed and not observed:
                rec.observed = False  # holds this node's own change: never stale
            return
        rec.pending = True
        rec.actor = actor
        rec.observed = observed
        rec.due = time.monotonic() + self.coalesce
        self._due.append(rec)
        self._wake.set()

    def _draft(self, rec: TrackedRecord, *, who: str | Any | None = UNKNOWN) -> FrameDraft | None:
        """The frame from the baseline to the doc now; moves the baseline. No I/O."""
        assert rec.baseline is not UNKNOWN
        rec.pending = False
        observed, rec.observed = rec.observed, False
        room = rec.room
        if rec.baseline is None and room.is_empty:
            return None
        after = project(room.doc, rec.types)
        p = diff(rec.baseline, after)
        if rec.baseline is not None and not p:
            return None
        op = "i" if rec.baseline is None else "u"
        rec.baseline = after
        return FrameDraft(
            t=rec.t,
            id=rec.id,
            op=op,
            p=p,
            who=rec.actor if who is UNKNOWN else who,
            at=now_ms(),
            ctx={"client_tx_id": None},
            record=after,
            update_id=_view(room) if observed else None,
        )

    def _watch(self, org: str, frames: tuple[FrameDraft, ...], future: Any) -> None:
        if not frames:
            return
        names = {f"{f.t}/{f.id}" for f in frames}
        queued = [
            (rec, draft)
            for draft in frames
            if (rec := self._records.get((org, f"{draft.t}/{draft.id}"))) is not None
        ]
        for rec, draft in queued:
            rec.uncommitted.append(draft)

        def done(fut: Any) -> None:
            for rec, draft in queued:
                rec.uncommitted.remove(draft)
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is None:
                return
            if isinstance(exc, MutationReplayed):
                log.info("mutation %r was applied by another node first", exc.client_tx_id)
            # The baselines moved on without their frames: read them again from the
            # store, so the next change (or reload) frames the difference.
            log.error("frames of %d records not stored: %s", len(names), exc)
            for name in names:
                rec = self._records.get((org, name))
                if rec is not None:
                    rec.baseline = UNKNOWN
                    self._mark(rec, None)

        future.add_done_callback(done)

    # -- the flush loop --------------------------------------------------------------

    async def _flush_loop(self) -> None:
        # A restart after a failure: records taken off the queue by the failed run
        # are still pending; queue them again (none is ever left pending unqueued).
        queued = {id(rec) for rec in self._due}
        for rec in list(self._records.values()):
            if rec.pending and id(rec) not in queued:
                self._due.append(rec)
        while True:
            while not self._due:
                await self._wake.wait()
                self._wake = anyio.Event()
            wait = self._due[0].due - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            now = time.monotonic()
            due: list[TrackedRecord] = []
            while self._due and self._due[0].due <= now:
                due.append(self._due.popleft())
            # Every await first: a draft and its queueing must not be separated by one,
            # or a mutation of the same record could be framed in between, with an
            # earlier sid than the older change it follows.
            for rec in due:
                if rec.pending and rec.baseline is UNKNOWN and self.is_current(rec):
                    try:
                        await self.ensure_baseline(rec)
                    except StoreError as exc:
                        log.error(
                            "record %s/%s: stored projection unreadable: %s", rec.t, rec.id, exc
                        )
                        rec.due = time.monotonic() + 1.0
                        self._due.append(rec)
            by_org: dict[str, list[FrameDraft | None]] = {}
            for rec in due:
                if rec.pending and rec.baseline is not UNKNOWN and self.is_current(rec):
                    try:
                        draft = self._draft(rec)
                    except Exception as exc:
                        # This record alone: it is framed again at its next change.
                        what = f"record {rec.room.name!r}"
                        self.supervisor.note_failure("frame_draft", what, exc)
                        continue
                    by_org.setdefault(rec.room.org, []).append(draft)
            for org, drafts in by_org.items():
                self._queue_each(org, drafts)

    def _queue_each(self, org: str, drafts: list[FrameDraft | None]) -> None:
        """Queue ``drafts`` in one batch; if the store refuses the batch (a value it
        could not read back), queue them one by one, so only the refused ones fail."""
        try:
            self.queue(org, drafts)
            return
        except values.UnstorableValue:
            if len(drafts) == 1:
                self._unframed(org, drafts[0])
                return
        for draft in drafts:
            try:
                self.queue(org, [draft])
            except values.UnstorableValue:
                self._unframed(org, draft)

    def _unframed(self, org: str, draft: FrameDraft | None) -> None:
        """``draft`` was refused by the store (logged there): its record's baseline moved
        without it, so read it again from the store at the record's next change."""
        if draft is None:
            return
        rec = self._records.get((org, f"{draft.t}/{draft.id}"))
        if rec is not None:
            rec.baseline = UNKNOWN

    async def _reconcile_stale(self) -> None:
        """Load every record whose stored projection lags its log (see the docstring).

        A record that cannot be loaded or re-framed is logged and counted
        (``task=reconcile``) and left for its next load; the others go on.
        """
        stale = await self.store.stale_records(limit=100_000)
        if stale:
            log.info("re-framing %d records whose last frames were not stored", len(stale))
        for org, name in stale:
            try:
                room = await self.manager.get_room(org, name)
            except ShuttingDown:
                return
            except Exception as exc:
                expected = isinstance(exc, RoomLoadError | StoreError)
                what = f"loading record doc {name!r}"
                self.supervisor.note_failure("reconcile", what, exc, traceback=not expected)
                continue
            try:
                rec = self.track(room)
                if rec is not None and rec.pending:
                    await self.flush(rec)
            except Exception as exc:
                self.supervisor.note_failure("reconcile", f"re-framing record doc {name!r}", exc)
            finally:
                self.manager.release(room)


class ChangeFrames:
    """The frames of one change a mutation makes to a record, and their publication.

    Passed as ``frames`` to :meth:`~rooms.room.Room.change`, which calls it once the
    change is applied to the doc and right before it queues the append (no yield in
    between): the record's frame is drafted there, and the write's place in the
    publisher's queue taken. Then :meth:`queued` with the append's commit, or
    :meth:`refused` if the append was never queued.
    """

    def __init__(
        self,
        coalescer: Coalescer,
        rec: TrackedRecord,
        *,
        who: str,
        ctx: dict[str, Any],
        mutation: tuple[str, dict[str, Any]] | None,
    ) -> None:
        self._coalescer = coalescer
        self._rec = rec
        self._who = who
        self._ctx = ctx
        self._mutation = mutation
        self._slot: Slot | None = None
        #: The drafts logged with the change (one, or none if nothing was framed).
        self.own: list[FrameDraft] = []

    def __call__(self) -> FrameBatch:
        draft = self._coalescer._draft(self._rec, who=self._who)
        if draft is not None:
            self.own.append(_with_ctx(draft, self._ctx))
        # The append is queued right after this returns (no yield in between).
        self._slot = self._coalescer.publisher.reserve()
        return FrameBatch(tuple(self.own), self._mutation)

    def refused(self) -> None:
        """The append was not queued (a value the store refused): give its place up."""
        if self._slot is not None:
            self._coalescer.publisher.drop(self._slot)

    def queued(self, commit: Commit[Committed]) -> None:
        """The append was queued as ``commit``: publish its frames once it commits."""
        assert self._slot is not None, "room.change() logged the change without its frames"
        self._coalescer.publisher.attach(self._slot, commit, _committed_frames)
        self._coalescer._watch(self._rec.room.org, tuple(self.own), commit)


def _logged(frames: list[Frame]) -> list[Frame]:
    """The frames a :meth:`~persistence.store.Store.log_frames` commit logged."""
    return frames


def _committed_frames(committed: Committed) -> list[Frame]:
    """The frames an append committed with its update."""
    return committed.frames


def _with_ctx(draft: FrameDraft, ctx: dict[str, Any]) -> FrameDraft:
    return FrameDraft(
        t=draft.t,
        id=draft.id,
        op=draft.op,
        p=draft.p,
        who=draft.who,
        at=draft.at,
        ctx=ctx,
        record=draft.record,
        update_id=None,  # the mutation's own update
    )
