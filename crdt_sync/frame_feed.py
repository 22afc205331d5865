"""The SyncFrame feed: record docs projected into frames, and mutations written back.

:class:`RecordFeed` is the rooms' :class:`~rooms.listener.RoomListener`. For every
loaded record room it keeps the *baseline*: the projection its last frame left
behind (the row of ``records``). A change marks the record pending; after
``--frame-coalesce-ms`` (or at once when another actor writes, a mutation comes,
or the room unloads) the projection is compared with the baseline and the
difference is logged as one frame.

Ordering: drafting a frame (project, diff, move the baseline) and queueing it in
the store never yield to the event loop, and the store commits in queue order, so
baselines and sids advance together. The frames each commit returns are published on
the node's :class:`~rooms.frame_bus.FrameBus` (which the
:class:`~rooms.feed_hub.FeedHub` subscribes to) in queue order, so in sid order, each
commit once: see :mod:`crdt_sync.records.publisher`.

A draft's ``update_id`` is left to the store (``None``: the doc's newest update at its
place in the queue, or the update it rides on): this node's log is in queue order.

Crashes: a record's stored projection remembers the newest update it covers. A
room that loads with a projection different from its stored one (its last frame
was lost to ``kill -9`` inside the coalescing window) emits the difference at once,
and at start-up the feed loads every record whose log is ahead of its projection.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
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
from rooms.frame_bus import FrameBus
from rooms.limits import LimitExceeded
from rooms.manager import RoomManager, ShuttingDown
from rooms.room import Origin, Room, RoomLoadError, RoomState, now_ms
from rooms.supervisor import Supervisor

from .docnames import split_record
from .records.publisher import FramePublisher, Slot
from .records.projection import RootTypes, diff, project, same
from .records.writes import FieldError, plan_write

log = logging.getLogger(__name__)

#: A baseline not read from the store yet.
UNKNOWN: Any = object()

#: Trim the frame log when it holds this much more than --frame-retention.
TRIM_SLACK = 0.1

#: Times a mutation starts again on the doc as it is after a delete that came in
#: while it waited (for a load, a baseline or frames): the delete is ordered first.
DELETED_RETRIES = 3


class MutationError(Exception):
    """One mutation of a batch failed; the others go on."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Mutation:
    """One entry of ``POST /sync/v1/mutations`` (already checked for shape)."""

    t: str
    id: str
    op: str
    p: dict[str, Any]
    client_tx_id: str | None = None
    base_sid: int | None = None

    @property
    def name(self) -> str:
        return f"{self.t}/{self.id}"


@dataclass(frozen=True, slots=True)
class _Wrote:
    """Another writer's latest frame touching fields of interest (see ``_overwritten``)."""

    op: str
    p: dict[str, Any]
    who: str | None
    sid: int


@dataclass(slots=True, eq=False)
class _Record:
    """What the feed knows of one loaded record room."""

    room: Room
    t: str
    id: str
    types: RootTypes = field(default_factory=RootTypes)
    baseline: Any = UNKNOWN  # dict of fields, None (no record) or UNKNOWN
    pending: bool = False
    actor: str | None = None  # who made the pending changes (None: recovered)
    due: float = 0.0
    loading: anyio.Event | None = None
    #: Its frames queued in the store and not committed yet (newest last): a
    #: mutation's ``base_sid`` conflicts are read from the store, which cannot see them.
    uncommitted: list[FrameDraft] = field(default_factory=list)


class RecordFeed:
    """Frames for every change of a record; mutations; deletes. See the module docstring.

    Args:
        store: Where frames and projections are logged.
        bus: Where the frames this node commits are published (the node's
            :class:`~rooms.feed_hub.FeedHub` subscribes to it).
        coalesce_ms: The coalescing window of Yjs updates.
        retention: Frames kept per tenant.
    """

    def __init__(
        self, store: Store, bus: FrameBus, *, coalesce_ms: float = 200, retention: int = 1_000_000
    ) -> None:
        self.store = store
        self.publisher = FramePublisher(bus, self._published)
        self.coalesce = coalesce_ms / 1000
        self.retention = retention
        self._manager: RoomManager | None = None
        self._records: dict[tuple[str, str], _Record] = {}
        self._due: deque[_Record] = deque()
        self._wake = anyio.Event()
        self._in_flight: dict[tuple[str, str], anyio.Event] = {}
        self._since_trim: dict[str, int] = {}
        self._trim_due: set[str] = set()
        self._trim_wake = anyio.Event()
        self.presence: Any = None  # crdt_sync.presence.Presence, told of awareness changes
        self.frames_logged = 0

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
            tg.start_soon(supervisor.loop, "frame_trim", self._trim_loop)
            what = "re-framing stale records"
            tg.start_soon(supervisor.task, "reconcile", what, self._reconcile_stale)
            task_status.started()

    # -- RoomListener --------------------------------------------------------------

    async def room_loaded(self, room: Room) -> None:
        rec = self._record(room)
        if rec is None:
            return
        await self._ensure_baseline(rec)
        if rec.baseline is None and room.is_empty:
            return
        if rec.baseline is None or not same(rec.baseline, project(room.doc, rec.types)):
            log.info("record %s/%s: stored projection is behind its doc, re-framing", rec.t, rec.id)
            self._mark(rec, None)

    def room_changing(self, room: Room, actor: str) -> None:
        rec = self._records.get((room.org, room.name))
        if rec is not None and rec.room is room and rec.pending and rec.actor != actor:
            self._set_apart(rec)

    def room_changed(self, room: Room, actor: str, origin: Origin) -> None:
        if origin is Origin.STORE:
            return
        rec = self._record(room)
        if rec is not None:
            self._mark(rec, actor)

    def room_awareness(self, room: Room) -> None:
        if self.presence is not None:
            self.presence.changed(room)

    async def room_unloading(self, room: Room) -> None:
        rec = self._records.get((room.org, room.name))
        if rec is not None and rec.pending:
            await self._flush_now(rec)

    def room_unloaded(self, room: Room) -> None:
        key = (room.org, room.name)
        rec = self._records.get(key)
        if rec is not None and rec.room is room:
            del self._records[key]
            rec.pending = False
        if self.presence is not None:
            self.presence.room_gone(room)

    # -- coalescing ----------------------------------------------------------------

    def _record(self, room: Room) -> _Record | None:
        key = (room.org, room.name)
        rec = self._records.get(key)
        if rec is not None and rec.room is room:
            return rec
        if room.state is not RoomState.LOADED:
            return None  # deleted or unloaded: nothing of it is framed any more
        split = split_record(room.name)
        if split is None:
            return None
        rec = self._records[key] = _Record(room, *split, types=RootTypes(room.name))
        return rec

    def _set_apart(self, rec: _Record) -> None:
        """Before a change by another actor is applied: frame the pending one now, so
        that neither is credited to the other's ``who``."""
        if rec.baseline is not UNKNOWN:
            self._queue(rec.room.org, [self._draft(rec)])
        else:
            # Without a baseline it cannot be framed yet: the merged change is
            # credited to nobody rather than to the wrong actor.
            rec.actor = None

    def _mark(self, rec: _Record, actor: str | None) -> None:
        """Note a change by ``actor``, already applied to the doc (see :meth:`room_changing`)."""
        if rec.pending:
            if rec.actor != actor:
                rec.actor = None  # merged with a change of someone else (or a recovery)
            return
        rec.pending = True
        rec.actor = actor
        rec.due = time.monotonic() + self.coalesce
        self._due.append(rec)
        self._wake.set()

    def _draft(self, rec: _Record, *, who: str | Any | None = UNKNOWN) -> FrameDraft | None:
        """The frame from the baseline to the doc now; moves the baseline. No I/O."""
        assert rec.baseline is not UNKNOWN
        rec.pending = False
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
        )

    def _queue(
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

    async def _ensure_baseline(self, rec: _Record) -> None:
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

    async def _flush_now(self, rec: _Record) -> None:
        """Frame ``rec``'s pending change now and wait until it is stored."""
        await self._ensure_baseline(rec)
        if rec.pending:
            future = self._queue(rec.room.org, [self._draft(rec)])
            if future is not None:
                await future

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
            due: list[_Record] = []
            while self._due and self._due[0].due <= now:
                due.append(self._due.popleft())
            # Every await first: a draft and its queueing must not be separated by one,
            # or a mutation of the same record could be framed in between, with an
            # earlier sid than the older change it follows.
            for rec in due:
                if rec.pending and rec.baseline is UNKNOWN and self._is_current(rec):
                    try:
                        await self._ensure_baseline(rec)
                    except StoreError as exc:
                        log.error(
                            "record %s/%s: stored projection unreadable: %s", rec.t, rec.id, exc
                        )
                        rec.due = time.monotonic() + 1.0
                        self._due.append(rec)
            by_org: dict[str, list[FrameDraft | None]] = {}
            for rec in due:
                if rec.pending and rec.baseline is not UNKNOWN and self._is_current(rec):
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
            self._queue(org, drafts)
            return
        except values.UnstorableValue:
            if len(drafts) == 1:
                self._unframed(org, drafts[0])
                return
        for draft in drafts:
            try:
                self._queue(org, [draft])
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

    def _is_current(self, rec: _Record) -> bool:
        """``rec`` is still the record of a loaded room (not of an unloaded one)."""
        return self._records.get((rec.room.org, rec.room.name)) is rec

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
                rec = self._record(room)
                if rec is not None and rec.pending:
                    await self._flush_now(rec)
            except Exception as exc:
                self.supervisor.note_failure("reconcile", f"re-framing record doc {name!r}", exc)
            finally:
                self.manager.release(room)

    # -- committed frames ----------------------------------------------------------

    def _published(self, frames: list[Frame]) -> None:
        """Frames this node committed, about to be published (in a commit's
        done-callback, outside any task)."""
        self.frames_logged += len(frames)
        self._count_for_trim(frames)

    def _count_for_trim(self, frames: list[Any]) -> None:
        for frame in frames:
            self._since_trim[frame.org] = self._since_trim.get(frame.org, 0) + 1
        for org, count in list(self._since_trim.items()):
            if count > max(1, int(self.retention * TRIM_SLACK)):
                self._since_trim[org] = 0
                self._trim_due.add(org)
                self._trim_wake.set()

    async def _trim_loop(self) -> None:
        """Keep each tenant's frame log near ``--frame-retention`` frames."""
        while True:
            await self._trim_wake.wait()
            self._trim_wake = anyio.Event()
            due, self._trim_due = self._trim_due, set()
            for org in sorted(due):
                try:
                    deleted = await self.store.trim_frames(org, self.retention)
                except StoreError as exc:
                    log.error("org=%s frames not trimmed: %s", org, exc)
                    continue
                if deleted:
                    log.info("org=%s trimmed %d frames (keeping %d)", org, deleted, self.retention)

    # -- mutations -----------------------------------------------------------------

    async def mutate_many(
        self, org: str, mutations: list[Mutation], *, actor: str, client_id: str | None
    ) -> list[dict[str, Any] | Exception]:
        """Apply mutations in order, each to its record's doc in one CRDT transaction,
        framed and stored in one store transaction; then wait for their commits
        together: a batch of 50 shares group commits, not 50 commits in a row.

        Returns:
            Per mutation, its result (``sid``; ``conflicts``: fields overwritten that
            another writer set since ``base_sid``; on a replayed ``client_tx_id``, the
            original answer) or the exception that failed it alone
            (:class:`MutationError`: 404 / 409 / 422, a store or load error).
        """
        started: list[_Started | Exception] = []
        in_batch: dict[str, tuple[int, Mutation]] = {}
        try:
            for m in mutations:
                tx = m.client_tx_id
                if tx is not None and tx in in_batch:
                    index, first = in_batch[tx]
                    if (first.t, first.id, first.op) != (m.t, m.id, m.op):
                        started.append(_tx_reused(m))
                    else:
                        started.append(_Started.replay_of(index))  # the same tx twice
                    continue
                try:
                    begun = await self._begin(org, m, actor, client_id)
                except Exception as exc:  # this mutation alone failed
                    started.append(_own_error(m, exc))
                    continue
                if tx is not None:
                    in_batch[tx] = (len(started), m)
                started.append(begun)
            outcomes: list[dict[str, Any] | Exception] = []
            for item in started:
                if isinstance(item, Exception):
                    outcomes.append(item)
                    continue
                try:
                    outcomes.append(await item.complete(outcomes))
                except Exception as exc:
                    outcomes.append(_own_error(mutations[len(outcomes)], exc))
            return outcomes
        finally:
            for item in started:
                if isinstance(item, _Started):
                    item.finish()

    async def _begin(self, org: str, m: Mutation, actor: str, client_id: str | None) -> _Started:
        """Everything up to the store queue: idempotency, checks, the CRDT change.

        A ``client_tx_id`` is held from its lookup until its mutation's commit (which
        stores the key) completes, never longer: a request never holds one key while
        it waits for another, so batches naming the same keys in any order cannot
        wait on each other.
        """
        tx = m.client_tx_id
        if tx is None:
            return await self._begin_change(org, m, actor, client_id)
        key = (org, tx)
        while (running := self._in_flight.get(key)) is not None:
            await running.wait()  # the same tx replayed by another request in flight
        done = self._in_flight[key] = anyio.Event()

        def release() -> None:
            if self._in_flight.get(key) is done:
                del self._in_flight[key]
            done.set()

        try:
            stored = await self.store.get_mutation(org, tx)
            if stored is not None:
                # A key names one mutation: the same key on another record (or op) is
                # not a replay, and must not hand out that record's result.
                if (stored.get("t"), stored.get("id"), stored.get("op")) != (m.t, m.id, m.op):
                    raise _tx_reused(m)
                begun = _Started({**stored, "replayed": True}, None, False)
            else:
                begun = await self._begin_change(org, m, actor, client_id)
        except BaseException:
            release()
            raise
        begun.when_committed(release)
        return begun

    async def _begin_change(
        self, org: str, m: Mutation, actor: str, client_id: str | None
    ) -> _Started:
        ctx = {"client_tx_id": m.client_tx_id}
        if client_id is not None:
            ctx["client_id"] = client_id
        try:  # before the doc changes: a frame the store refuses would fail after it
            values.dumps(ctx, "ctx")
        except values.UnstorableValue as exc:
            raise MutationError(400, "invalid_mutation", str(exc)) from None
        if m.op == "d":
            return _Started(await self._delete(org, m, actor, ctx), None, False)
        manager = self.manager
        for _ in range(DELETED_RETRIES):
            room = await manager.hold(org, m.name)
            try:
                begun = await self._change(org, m, room, actor, client_id, ctx)
            except BaseException:
                manager.unhold(room)
                raise
            if begun is not None:
                begun.on_finish(lambda room=room: manager.unhold(room))
                return begun
            manager.unhold(room)  # deleted while this mutation waited: once more
        raise MutationError(
            409, "deleted", f"record {m.t}/{m.id} was deleted while this mutation was applied"
        )

    async def _change(
        self,
        org: str,
        m: Mutation,
        room: Room,
        actor: str,
        client_id: str | None,
        ctx: dict[str, Any],
    ) -> _Started | None:
        """Check and apply ``m`` to ``room`` (held); ``None``: the room was deleted first."""
        rec = self._record(room)
        if rec is None:
            return None
        await self._flush_now(rec)
        others: list[Any] = []
        if m.base_sid is not None:
            others = await self._written_by_others(org, m, actor, client_id)
        await self._ensure_baseline(rec)
        # -- from here to the store append nothing yields: what is checked here still
        # holds when the change is made (two inserts of one record: one finds the
        # other's change; a delete: the room is no longer loaded) ----------------------
        if room.state is not RoomState.LOADED or not self._is_current(rec):
            return None
        if m.op == "i" and not room.is_empty:
            raise MutationError(409, "exists", f"record {m.t}/{m.id} already exists")
        if m.op == "u" and room.is_empty:
            raise MutationError(404, "not_found", f"no record {m.t}/{m.id}")
        if m.op == "i" and all(v is None for v in m.p.values()):
            raise MutationError(422, "empty_insert", "an insert needs a non-null field")
        try:  # before the doc changes: Yjs has no rollback
            room.check_growth(len(json.dumps(m.p, ensure_ascii=False).encode("utf-8", "replace")))
        except LimitExceeded as exc:
            raise MutationError(413, exc.error, exc.detail) from None
        if m.base_sid is not None:
            # Frames queued meanwhile (another mutation, a coalesced edit) are not in
            # what was read, and are newer than all of it.
            others += [
                d
                for d in rec.uncommitted
                if (d.who, d.ctx.get("client_id")) != (actor, client_id)
                and not _already_read(d, others)
            ]
        # A pending change of the doc is framed before the mutation, in a batch of its
        # own: the idempotency key remembers the mutation's own sid, not this one's.
        pending = self._draft(rec) if rec.pending else None
        self._queue(org, [pending])
        if pending is not None and (pending.who, None) != (actor, client_id):
            others.append(pending)
        try:
            write = plan_write(room.doc, rec.types, m.p)
        except FieldError as exc:
            raise MutationError(exc.status, "invalid_field", f"p.{exc.field}: {exc}") from None
        before = rec.baseline or {}
        result: dict[str, Any] = {
            "t": m.t,
            "id": m.id,
            "op": m.op,
            "status": 201 if m.op == "i" else 200,
            "client_tx_id": m.client_tx_id,
        }
        overwritten = _overwritten(others, m.p, before)
        result["conflicts"] = sorted(overwritten)
        result["overwritten"] = overwritten
        own: list[FrameDraft] = []
        mutation_key = (m.client_tx_id, result) if m.client_tx_id else None
        slot: Slot | None = None

        def frames() -> FrameBatch:
            nonlocal slot
            draft = self._draft(rec, who=actor)
            if draft is not None:
                own.append(_with_ctx(draft, ctx))
            # The append is queued right after this returns (no yield in between).
            slot = self.publisher.reserve()
            return FrameBatch(tuple(own), mutation_key)

        try:
            appended = await room.change(write, actor=actor, frames=frames)
        except BaseException:
            # Raised before the append was queued (a value the store refused): once
            # queued, nothing in room.change() raises.
            if slot is not None:
                self.publisher.drop(slot)
            raise
        if appended is None:  # nothing changed: no frame, but remember the answer
            return _Started(result, self._queue(org, [], mutation=mutation_key), False)
        assert slot is not None, "room.change() logged the change without its frames"
        self.publisher.attach(slot, appended.durable, _committed_frames)
        self._watch(org, tuple(own), appended.durable)
        begun = _Started(result, appended.durable, bool(own))
        manager = self.manager
        begun.on_finish(lambda: manager.after_update(room))
        return begun

    async def _written_by_others(
        self, org: str, m: Mutation, actor: str, client_id: str | None
    ) -> list[_Wrote]:
        """What other writers did to ``m``'s fields since its ``base_sid``, oldest first,
        from the store's frame index (no frame is decoded)."""
        assert m.base_sid is not None
        rows = await self.store.record_writers(
            org, m.t, m.id, m.base_sid, list(m.p), exclude=(actor, client_id)
        )
        wrote = [
            _Wrote("d", {}, who, sid) if field is None else _Wrote("u", {field: None}, who, sid)
            for field, who, sid in rows
        ]
        wrote.sort(key=lambda w: w.sid)
        return wrote

    async def _delete(
        self, org: str, m: Mutation, actor: str, ctx: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "t": m.t,
            "id": m.id,
            "op": "d",
            "status": 200,
            "client_tx_id": m.client_tx_id,
            "conflicts": [],
            "overwritten": {},
        }
        sid = await self.delete(org, m.name, actor=actor, ctx=ctx, mutation=result)
        if sid is None:
            raise MutationError(404, "not_found", f"no record {m.t}/{m.id}")
        result["sid"] = sid
        return result

    async def delete(
        self,
        org: str,
        name: str,
        *,
        actor: str,
        ctx: dict[str, Any] | None = None,
        mutation: dict[str, Any] | None = None,
    ) -> int | None:
        """Delete record doc ``name`` with a ``d`` frame, in one transaction.

        Its Yjs clients are closed with 4404. Returns the frame's sid, or ``None`` if
        there was no such record.
        """
        split = split_record(name)
        assert split is not None, f"{name!r} is not a record"
        t, record_id = split
        key = (org, name)
        # No load of the doc and no new room until the deletion is committed.
        async with self.manager.deleting(org, name) as room:
            rec = self._records.get(key) if room is not None else None
            if rec is not None and rec.room is room:
                await self._ensure_baseline(rec)
                exists = rec.baseline is not None or not rec.room.is_empty
            else:
                row = await self.store.get_record(org, t, record_id)
                exists = row is not None
            room_had_doc = self.manager.delete_room(org, name)  # closes editors with 4404
            if not exists and not room_had_doc:
                # A doc may still be stored without a projection (never framed).
                if not await self.store.delete(org, name):
                    return None
            draft = FrameDraft(
                t=t,
                id=record_id,
                op="d",
                p={},
                who=actor,
                at=now_ms(),
                ctx=ctx or {"client_tx_id": None},
                record=None,
            )
            tx = mutation.get("client_tx_id") if mutation else None
            future = self._queue(
                org, [draft], delete=name, mutation=(tx, mutation) if tx and mutation else None
            )
            assert future is not None
            frames = await future
        return frames[-1].sid


class _Started:
    """A mutation applied to its doc and queued in the store, not yet committed."""

    def __init__(self, result: dict[str, Any], commit: Any, framed: bool) -> None:
        self.result = result
        # The store's commit (an append's Committed, or log_frames' frames), or None
        # when nothing was written.
        self._commit = commit
        self._framed = framed  # whether the commit's last frame is this mutation's
        self._finish: list[Callable[[], None]] = []
        self._replay_of: int | None = None

    @classmethod
    def replay_of(cls, index: int) -> _Started:
        """The same ``client_tx_id`` again, later in one batch: the earlier one's answer."""
        started = cls({}, None, False)
        started._replay_of = index
        return started

    def on_finish(self, callback: Callable[[], None]) -> None:
        self._finish.append(callback)

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the commit is over (at once if nothing was written),
        whether or not anybody awaits it."""
        add_done_callback = getattr(self._commit, "add_done_callback", None)
        if self._commit is None:
            callback()
        elif add_done_callback is not None:
            add_done_callback(lambda _: callback())
        else:  # a plain awaitable: when the batch is answered
            self.on_finish(callback)

    async def complete(self, earlier: list[dict[str, Any] | Exception]) -> dict[str, Any]:
        """Wait for the commit; the result with its ``sid``."""
        if self._replay_of is not None:
            first = earlier[self._replay_of]
            if isinstance(first, Exception):
                raise first
            return {**first, "replayed": True}
        if self._commit is not None:
            try:
                outcome = await self._commit
            except MutationReplayed as exc:  # another node stored the key first
                return {**exc.result, "replayed": True}
            if isinstance(outcome, Committed) and outcome.replayed is not None:
                return {**outcome.replayed, "replayed": True}
            frames = outcome.frames if isinstance(outcome, Committed) else outcome
            self.result["sid"] = frames[-1].sid if self._framed and frames else None
        self.result.setdefault("sid", None)
        return self.result

    def finish(self) -> None:
        callbacks, self._finish = self._finish, []
        for callback in reversed(callbacks):
            callback()


def _own_error(m: Mutation, exc: Exception) -> Exception:
    """``exc`` as the failure of ``m`` alone: an error the API answers as such, or (a
    bug) logged and answered 500 for this mutation only, never for its batch."""
    if isinstance(exc, (MutationError, StoreError, RoomLoadError, ShuttingDown)):
        return exc
    log.error("mutation %s %s/%s failed", m.op, m.t, m.id, exc_info=exc)
    return MutationError(500, "internal_error", "the server failed to apply this mutation")


def _already_read(draft: FrameDraft, wrote: list[Any]) -> bool:
    """``draft`` committed while the store was read: every field it touched is already
    in ``wrote`` (what :meth:`RecordFeed._written_by_others` returned) by its writer."""
    mine = [w for w in wrote if isinstance(w, _Wrote) and w.who == draft.who]
    if draft.op == "d":
        return any(w.op == "d" for w in mine)
    touched = {name for w in mine for name in w.p}
    return bool(draft.p) and draft.p.keys() <= touched


def _tx_reused(m: Mutation) -> MutationError:
    return MutationError(
        409,
        "tx_id_reused",
        f"client_tx_id {m.client_tx_id!r} already names another mutation "
        "(a different record or op): use a new client_tx_id",
    )


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


def _overwritten(
    others: list[Any], p: dict[str, Any], before: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Fields of ``p`` that another writer set (in ``others``: frames or drafts) and that
    this mutation changes, with the value it replaces and who wrote it last."""
    found: dict[str, dict[str, Any]] = {}
    for frame in others:
        touched = p.keys() if frame.op == "d" else p.keys() & frame.p.keys()
        for name in touched:
            if same(before.get(name), p[name]):
                continue  # not overwritten: it already holds this value
            found[name] = {
                "value": before.get(name),
                "who": frame.who,
                "sid": getattr(frame, "sid", None),
            }
    return found
