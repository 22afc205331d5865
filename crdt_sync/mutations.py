"""The mutation engine: ``POST /sync/v1/mutations`` (and record deletes) applied to docs.

A mutation is applied to its record's doc in one CRDT transaction (so Yjs editors see
it live), and framed and stored in one store transaction with its idempotency key: see
:meth:`MutationEngine.mutate_many`. The frames themselves are drafted by the
:class:`~crdt_sync.records.coalescer.Coalescer`, which owns when a record is framed:
a change still pending on the doc is framed first, in a batch of its own, then the
mutation's own change.

Ordering rule owned here: *mutations of one record apply in order and answer once*.
A ``client_tx_id`` is held from its lookup until its mutation's commit (which stores
the key) completes, so a replay waits for the first and answers its result (also when
another node stored the key first: :class:`~persistence.store.MutationReplayed`); a
key names one mutation (another record or op with it: 409 ``tx_id_reused``). Every
check of a mutation and its change to the doc happen with no yield in between (so what
was checked still holds), and the fields another writer set since ``base_sid`` and
this mutation overwrites are reported as ``conflicts``/``overwritten``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from persistence import values
from persistence.store import Committed, FrameDraft, MutationReplayed, Store, StoreError
from rooms.limits import LimitExceeded
from rooms.manager import RoomManager, ShuttingDown
from rooms.room import Room, RoomLoadError, RoomState

from .docnames import split_record
from .records.coalescer import UNKNOWN as UNKNOWN_BASELINE
from .records.coalescer import Coalescer
from .records.projection import same
from .records.writes import FieldError, plan_write

log = logging.getLogger(__name__)

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


class MutationEngine:
    """Mutations and deletes of records. See the module docstring.

    Args:
        store: Where idempotency keys and conflicts are read.
        coalescer: Frames what the mutations change (and holds the rooms' manager).
    """

    def __init__(self, store: Store, coalescer: Coalescer) -> None:
        self.store = store
        self.coalescer = coalescer
        self._in_flight: dict[tuple[str, str], anyio.Event] = {}
        #: Told of every change a mutation made (the listener is not: see
        #: ``Room.change``): ``on_change(room, actor)``; the version keeper's authors.
        self.on_change: Callable[[Room, str], None] | None = None

    @property
    def manager(self) -> RoomManager:
        return self.coalescer.manager

    async def mutate_many(
        self,
        org: str,
        mutations: list[Mutation],
        *,
        actor: str,
        client_id: str | None,
        tx: str | None = None,
    ) -> list[dict[str, Any] | Exception]:
        """Apply mutations in order, each to its record's doc in one CRDT transaction;
        a batch's inserts and updates are stored in ONE store transaction
        (:meth:`~persistence.store.Store.atomic`), so their frames, which share the
        batch's ``tx`` id, get consecutive sids and reach every subscriber together.

        Everything that waits (loading a doc, reading its projection, conflicts since
        ``base_sid``, framing a pending change) is done for each mutation first; then
        every check and change of the group runs with no yield in between. A delete
        (which waits for its own commit), and a mutation whose ``client_tx_id`` another
        request holds (which must not wait while this one holds keys), end the group:
        the mutations after them form the next one, with the same ``tx``.

        Returns:
            Per mutation, its result (``sid``; ``tx``; ``conflicts``: fields overwritten
            that another writer set since ``base_sid``; on a replayed ``client_tx_id``,
            the original answer) or the exception that failed it alone
            (:class:`MutationError`: 404 / 409 / 422, a store or load error).
        """
        tx = tx if tx is not None else new_tx_id()
        started: list[_Started | _Prepared | Exception] = []
        group: list[int] = []  # indexes in started of the _Prepared not applied yet
        in_batch: dict[str, tuple[int, Mutation]] = {}
        try:
            for m in mutations:
                key = m.client_tx_id
                if key is not None and key in in_batch:
                    index, first = in_batch[key]
                    if (first.t, first.id, first.op) != (m.t, m.id, m.op):
                        started.append(_tx_reused(m))
                    else:
                        started.append(_Started.replay_of(index))  # the same tx twice
                    continue
                if group and (m.op == "d" or self._held(org, key)):
                    await self._apply_group(org, group, started, actor, client_id)
                    group = []
                try:
                    begun = await self._begin(org, m, actor, client_id, tx)
                except Exception as exc:  # this mutation alone failed
                    started.append(_own_error(m, exc))
                    continue
                if key is not None:
                    in_batch[key] = (len(started), m)
                if isinstance(begun, _Prepared):
                    group.append(len(started))
                started.append(begun)
            if group:
                await self._apply_group(org, group, started, actor, client_id)
                group = []
            outcomes: list[dict[str, Any] | Exception] = []
            for item in started:
                if isinstance(item, Exception):
                    outcomes.append(item)
                    continue
                assert isinstance(item, _Started)
                try:
                    outcomes.append(await item.complete(outcomes))
                except Exception as exc:
                    outcomes.append(_own_error(mutations[len(outcomes)], exc))
            return outcomes
        finally:
            for item in started:
                if isinstance(item, _Started):
                    item.finish()
                elif isinstance(item, _Prepared):  # never applied (cancelled)
                    item.abandon()

    def _held(self, org: str, key: str | None) -> bool:
        """Whether another request holds idempotency key ``key`` now."""
        return key is not None and (org, key) in self._in_flight

    async def _apply_group(
        self,
        org: str,
        group: list[int],
        started: list[_Started | _Prepared | Exception],
        actor: str,
        client_id: str | None,
    ) -> None:
        """Check and apply the prepared mutations at ``group`` (indexes in ``started``,
        replaced by their outcome) in one store transaction, with no yield in between.

        One whose record was deleted since it was prepared starts over afterwards,
        alone, on the doc as it is then.
        """
        again: list[int] = []
        with self.store.atomic():
            for index in group:
                prepared = started[index]
                assert isinstance(prepared, _Prepared)
                try:
                    begun = await prepared.apply()  # no yield: the store queues at once
                except Exception as exc:
                    prepared.abandon()
                    started[index] = _own_error(prepared.m, exc)
                    continue
                if begun is None:
                    prepared.drop_room()
                    again.append(index)
                else:
                    started[index] = begun
        for index in again:
            prepared = started[index]
            assert isinstance(prepared, _Prepared)
            try:
                begun = await self._change_alone(org, prepared.m, actor, client_id, prepared.ctx)
            except Exception as exc:
                prepared.abandon()
                started[index] = _own_error(prepared.m, exc)
                continue
            prepared.hand_over(begun)
            started[index] = begun

    async def _begin(
        self, org: str, m: Mutation, actor: str, client_id: str | None, tx: str
    ) -> _Started | _Prepared:
        """Everything up to the change: idempotency, and what the change waits for.

        A ``client_tx_id`` is held from its lookup until its mutation's commit (which
        stores the key) completes, never longer: a request never waits for a key while
        a mutation of it that holds one is not queued in the store (see
        :meth:`mutate_many`), so batches naming the same keys in any order cannot
        wait on each other.
        """
        key_name = m.client_tx_id
        if key_name is None:
            return await self._begin_change(org, m, actor, client_id, tx)
        key = (org, key_name)
        while (running := self._in_flight.get(key)) is not None:
            await running.wait()  # the same tx replayed by another request in flight
        done = self._in_flight[key] = anyio.Event()

        def release() -> None:
            if self._in_flight.get(key) is done:
                del self._in_flight[key]
            done.set()

        try:
            stored = await self.store.get_mutation(org, key_name)
            if stored is not None:
                # A key names one mutation: the same key on another record (or op) is
                # not a replay, and must not hand out that record's result.
                if (stored.get("t"), stored.get("id"), stored.get("op")) != (m.t, m.id, m.op):
                    raise _tx_reused(m)
                begun: _Started | _Prepared = _Started({**stored, "replayed": True}, None, False)
            else:
                begun = await self._begin_change(org, m, actor, client_id, tx)
        except BaseException:
            release()
            raise
        begun.when_committed(release)
        return begun

    async def _begin_change(
        self, org: str, m: Mutation, actor: str, client_id: str | None, tx: str
    ) -> _Started | _Prepared:
        ctx: dict[str, Any] = {"client_tx_id": m.client_tx_id, "tx": tx}
        if client_id is not None:
            ctx["client_id"] = client_id
        try:  # before the doc changes: a frame the store refuses would fail after it
            values.dumps(ctx, "ctx")
        except values.UnstorableValue as exc:
            raise MutationError(400, "invalid_mutation", str(exc)) from None
        if m.op == "d":
            return _Started(await self._delete(org, m, actor, ctx), None, False)
        return await self._prepare_held(org, m, actor, client_id, ctx)

    async def _prepare_held(
        self, org: str, m: Mutation, actor: str, client_id: str | None, ctx: dict[str, Any]
    ) -> _Prepared:
        """Hold ``m``'s room and prepare ``m`` on it (again if it is deleted meanwhile)."""
        manager = self.manager
        for _ in range(DELETED_RETRIES):
            room = await manager.hold(org, m.name)
            try:
                prepared = await self._prepare(org, m, room, actor, client_id, ctx)
            except BaseException:
                manager.unhold(room)
                raise
            if prepared is not None:
                return prepared
            manager.unhold(room)  # deleted while this mutation waited: once more
        raise _deleted_meanwhile(m)

    async def _change_alone(
        self, org: str, m: Mutation, actor: str, client_id: str | None, ctx: dict[str, Any]
    ) -> _Started:
        """Prepare and apply ``m`` at once, outside any group."""
        for _ in range(DELETED_RETRIES):
            prepared = await self._prepare_held(org, m, actor, client_id, ctx)
            try:
                begun = await prepared.apply()
            except BaseException:
                prepared.abandon()
                raise
            if begun is not None:
                return begun
            prepared.drop_room()
        raise _deleted_meanwhile(m)

    async def _prepare(
        self,
        org: str,
        m: Mutation,
        room: Room,
        actor: str,
        client_id: str | None,
        ctx: dict[str, Any],
    ) -> _Prepared | None:
        """What ``m``'s change to ``room`` (held) waits for; ``None``: the room was
        deleted first."""
        coalescer = self.coalescer
        rec = coalescer.track(room)
        if rec is None:
            return None
        await coalescer.flush(rec)
        others: list[Any] = []
        if m.base_sid is not None:
            others = await self._written_by_others(org, m, actor, client_id)
        await coalescer.ensure_baseline(rec)
        return _Prepared(self, m, room, rec, others, actor, client_id, ctx)

    async def _change(self, prepared: _Prepared) -> _Started | None:
        """Check and apply a prepared mutation; ``None``: its room was deleted first.

        Nothing here yields before the store append is queued (nor after it inside
        :meth:`~persistence.store.Store.atomic`): what is checked here still holds when
        the change is made (two inserts of one record: one finds the other's change;
        a delete: the room is no longer loaded).
        """
        m, room, rec = prepared.m, prepared.room, prepared.rec
        actor, client_id, ctx = prepared.actor, prepared.client_id, prepared.ctx
        coalescer = self.coalescer
        others = list(prepared.others)
        if room.state is not RoomState.LOADED or not coalescer.is_current(rec):
            return None
        if rec.baseline is UNKNOWN_BASELINE:
            return None  # its projection must be read again (a failed commit): prepare again
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
        pending = coalescer.frame_pending(rec)
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
            "tx": ctx.get("tx"),
        }
        overwritten = _overwritten(others, m.p, before)
        result["conflicts"] = sorted(overwritten)
        result["overwritten"] = overwritten
        mutation_key = (m.client_tx_id, result) if m.client_tx_id else None
        frames = coalescer.change_frames(rec, who=actor, ctx=ctx, mutation=mutation_key)
        try:
            appended = await room.change(write, actor=actor, frames=frames)
        except BaseException:
            # Raised before the append was queued (a value the store refused): once
            # queued, nothing in room.change() raises.
            frames.refused()
            raise
        if appended is None:  # nothing changed: no frame, but remember the answer
            return _Started(result, coalescer.queue(room.org, [], mutation=mutation_key), False)
        frames.queued(appended.durable)
        if self.on_change is not None:
            self.on_change(room, actor)
        begun = _Started(result, appended.durable, bool(frames.own))
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
        coalescer = self.coalescer
        # No load of the doc and no new room until the deletion is committed.
        async with self.manager.deleting(org, name) as room:
            rec = coalescer.tracked(org, name) if room is not None else None
            if rec is not None and rec.room is room:
                await coalescer.ensure_baseline(rec)
                exists = rec.baseline is not None or not rec.room.is_empty
            else:
                row = await self.store.get_record(org, t, record_id)
                exists = row is not None
            room_had_doc = self.manager.delete_room(org, name)  # closes editors with 4404
            if not exists and not room_had_doc:
                # A doc may still be stored without a projection (never framed).
                if not await self.store.delete(org, name):
                    return None
            tx = mutation.get("client_tx_id") if mutation else None
            key = (tx, mutation) if tx and mutation else None
            future = coalescer.queue_delete(org, name, who=actor, ctx=ctx, mutation=key)
            frames = await future
        return frames[-1].sid


class _Prepared:
    """A mutation whose change waits for nothing any more: :meth:`apply` checks and
    makes it with no yield in between. It holds its room until it is finished."""

    def __init__(
        self,
        engine: MutationEngine,
        m: Mutation,
        room: Room,
        rec: Any,
        others: list[Any],
        actor: str,
        client_id: str | None,
        ctx: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.m = m
        self.room: Room | None = room
        self.rec = rec
        self.others = others
        self.actor = actor
        self.client_id = client_id
        self.ctx = ctx
        self._committed: list[Callable[[], None]] = []

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the change is committed (or never made)."""
        self._committed.append(callback)

    async def apply(self) -> _Started | None:
        """Check and make the change (see :meth:`MutationEngine._change`); ``None``: its
        record was deleted since it was prepared (then :meth:`drop_room`)."""
        begun = await self.engine._change(self)
        if begun is not None:
            self.hand_over(begun)
        return begun

    def hand_over(self, begun: _Started) -> None:
        """``begun`` is this mutation's change: it releases the room and the key."""
        room, self.room = self.room, None
        if room is not None:
            manager = self.engine.manager
            begun.on_finish(lambda: manager.unhold(room))
        callbacks, self._committed = self._committed, []
        for callback in callbacks:
            begun.when_committed(callback)

    def drop_room(self) -> None:
        """Let its room go (it is to be prepared again); the key stays held."""
        room, self.room = self.room, None
        if room is not None:
            self.engine.manager.unhold(room)

    def abandon(self) -> None:
        """It will not be made: release the room and the key."""
        self.drop_room()
        callbacks, self._committed = self._committed, []
        for callback in callbacks:
            callback()


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
    in ``wrote`` (what :meth:`MutationEngine._written_by_others` returned) by its writer."""
    mine = [w for w in wrote if isinstance(w, _Wrote) and w.who == draft.who]
    if draft.op == "d":
        return any(w.op == "d" for w in mine)
    touched = {name for w in mine for name in w.p}
    return bool(draft.p) and draft.p.keys() <= touched


def new_tx_id() -> str:
    """The ``tx`` id of a mutation request: shared by its frames and results."""
    return secrets.token_hex(8)


def _deleted_meanwhile(m: Mutation) -> MutationError:
    return MutationError(
        409, "deleted", f"record {m.t}/{m.id} was deleted while this mutation was applied"
    )


def _tx_reused(m: Mutation) -> MutationError:
    return MutationError(
        409,
        "tx_id_reused",
        f"client_tx_id {m.client_tx_id!r} already names another mutation "
        "(a different record or op): use a new client_tx_id",
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
