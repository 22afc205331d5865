"""An in-memory :class:`persistence.store.Store`: for unit tests, never the default.

It keeps the contract's observable behaviour, nothing else: writes are queued
synchronously and committed together on the next event-loop iteration (one "group
commit"), so a caller sees "queued" (its :class:`~persistence.store.Commit` not done)
before "committed"; ids and sids are assigned at that commit; reads see what is
committed. Values are held as the JSON text the other backends store and parsed on
every read, so a caller never shares a dict with the store and gets back exactly what
a database would give it (lists for tuples, strict JSON refused before queueing).

Every op of a commit is computed before it changes anything, so an op that fails (a
compaction handed bytes that are no Yjs update: the only write that can fail here) fails
alone, leaves no trace and raises to its awaiter; appends never fail, so :meth:`flush`
has nothing to report. The
rules shared with every backend live in :mod:`persistence.framing` (which drafts are
logged) and :mod:`persistence.values` (what may be stored).

The webhook outbox (:mod:`persistence.outbox`, with ``outbox=True``) is the one part
not held in dicts: its rows live in a private in-memory SQLite database driven by the
same SQL as the SQLite backend, written inside the commit that logs the frames.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from pycrdt import merge_updates

from persistence import framing, outbox, paging, prepared, values, versions
from persistence.framing import fold, settle
from persistence.lifecycle import StartClose, check_open
from persistence.store import (
    Appended,
    Commit,
    Committed,
    DocInfo,
    DocTail,
    Frame,
    FrameBatch,
    FrameDraft,
    FramePage,
    RecordRow,
    StoredDoc,
    StoreError,
    StoreStats,
    StoreWriteError,
    VersionInfo,
)

__all__ = ["MemoryStore"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Doc:
    created_at: int
    updated_at: int
    snapshot: bytes | None = None
    upto: int = 0  # the newest update id folded into the snapshot
    log: list[tuple[int, bytes]] = field(default_factory=list)  # after the snapshot

    @property
    def last_update_id(self) -> int:
        return self.log[-1][0] if self.log else self.upto


@dataclass(frozen=True, slots=True)
class _FrameRow:
    sid: int
    t: str
    id: str
    op: str
    p: str  # JSON text, as stored
    who: str | None
    at: int
    ctx: str


@dataclass(frozen=True, slots=True)
class _RecordRow:
    fields: str  # JSON text
    sid: int
    update_id: int
    updated_at: int


@dataclass(slots=True)
class _Tenant:
    """Everything of one org: no op reads or writes another tenant's."""

    docs: dict[str, _Doc] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # names compact() must not bring back
    frames: list[_FrameRow] = field(default_factory=list)  # sid order
    last_sid: int = 0  # only grows: sids are never reused
    records: dict[tuple[str, str], _RecordRow] = field(default_factory=dict)
    mutations: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    #: doc name -> its versions, oldest first: (info, state)
    versions: dict[str, list[tuple[VersionInfo, bytes]]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Op:
    apply: Callable[[], Any]  # runs inside the commit; its return value is the result
    commit: Commit[Any]
    size: int
    write: bool = True  # False: a barrier (flush), not counted as a write


class MemoryStore(StartClose):
    """The store contract held in dicts (see the module docstring).

    Use ``async with MemoryStore() as store:`` or :meth:`start` and :meth:`close`;
    every method must be called from the event loop that ran :meth:`start`.
    """

    def __init__(self, *, outbox: bool = False) -> None:
        self._outbox = outbox
        self._outbox_db: sqlite3.Connection | None = None
        self._state = "new"  # -> "open" -> "closed"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tenants: dict[str, _Tenant] = {}
        self._last_update_id = 0
        self._last_version_id = 0  # one sequence for the store: ids are never reused
        self._pending: list[_Op] = []
        self._scheduled = False
        self._commits = 0
        self._failed_batches = 0
        self._refused_batches = 0
        self._last_batch_size = 0
        self._last_commit_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise StoreError("MemoryStore can only be started once")
        self._loop = asyncio.get_running_loop()
        from sqlite_utils import Database

        from persistence.sqlite.schema import MIGRATIONS

        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        for webhook_tables in MIGRATIONS[5:7]:  # SQLite's v6 and v7
            webhook_tables(Database(conn))
        self._outbox_db = conn
        self._state = "open"

    async def close(self) -> None:
        """Commit everything queued, then refuse every later call. Idempotent."""
        if self._state == "open":
            self._commit_pending()
        self._state = "closed"
        await asyncio.sleep(0)

    def stats(self) -> StoreStats:
        return StoreStats(
            commits=self._commits,
            failed_batches=self._failed_batches,
            last_commit_seconds=self._last_commit_seconds,
            last_batch_size=self._last_batch_size,
            queued=sum(op.write for op in self._pending),
            queued_bytes=sum(op.size for op in self._pending),
            refused_batches=self._refused_batches,
        )

    def health(self) -> str | None:
        return None if self._state == "open" else f"store {self._state}"

    async def probe(self) -> None:
        await self._submit(lambda: None, 0)

    async def flush(self) -> None:
        await self._submit(lambda: None, 0, write=False)

    # -- writes ------------------------------------------------------------------------

    async def append(
        self,
        org: str,
        name: str,
        update: bytes,
        *,
        actor: str,
        at: int,
        frames: FrameBatch | None = None,
    ) -> Appended:
        self._check_open()
        values.check_key(org, name)
        data = values.as_bytes(update, "update")
        values.check_opt_text(actor, "actor")
        values.check_int(at, "at")
        batch = self._prepare(org, frames) if frames is not None else None

        def apply() -> Committed:
            tenant = self._tenant(org)
            doc = tenant.docs.get(name)
            if doc is None:
                doc = tenant.docs[name] = _Doc(created_at=at, updated_at=at)
            prev = doc.last_update_id
            self._last_update_id += 1
            update_id = self._last_update_id
            doc.log.append((update_id, data))
            doc.updated_at = max(doc.updated_at, at)
            logged = self._log(org, tenant, batch, update_id) if batch is not None else []
            return Committed(update_id=update_id, prev_update_id=prev, frames=logged)

        return Appended(durable=self._queue(apply, len(data)))

    def atomic(self) -> AbstractContextManager[None]:
        """See :meth:`persistence.store.Store.atomic`: every write queued in one
        event-loop iteration commits together here, so a block that does not yield is
        one transaction already."""
        self._check_open()
        return nullcontext()

    def log_frames(
        self, org: str, batch: FrameBatch, *, delete: str | None = None
    ) -> Commit[list[Frame]]:
        self._check_open()
        values.check_text(org, "org")
        if delete is not None:
            values.check_key(org, delete)
        prepared = self._prepare(org, batch)

        def apply() -> list[Frame]:
            tenant = self._tenant(org)
            if delete is not None:
                _delete_doc(tenant, delete)
            return self._log(org, tenant, prepared, None)

        return self._queue(apply, 0)

    async def compact(self, org: str, name: str, state: bytes) -> None:
        self._check_open()
        values.check_key(org, name)
        data = values.as_bytes(state, "state")

        def apply() -> None:
            tenant = self._tenant(org)
            doc = tenant.docs.get(name)
            if doc is None and name in tenant.deleted:
                return  # deleted docs stay deleted
            parts = [data]
            if doc is not None:  # what another writer logged and ``state`` lacks included
                parts += [update for _, update in doc.log]
                if doc.snapshot is not None:
                    parts.append(doc.snapshot)
            merged = merge_updates(*parts)  # before any change: may raise
            if doc is None:
                now = values.now_ms()
                doc = tenant.docs[name] = _Doc(created_at=now, updated_at=now)
            doc.snapshot, doc.upto, doc.log = merged, doc.last_update_id, []

        await self._submit(apply, len(data))

    async def delete(self, org: str, name: str) -> bool:
        self._check_open()
        values.check_key(org, name)
        return bool(await self._submit(lambda: _delete_doc(self._tenant(org), name), 0))

    async def append_frame(
        self,
        org: str,
        *,
        t: str,
        id: str,
        op: str,
        p: dict[str, Any],
        who: str | None,
        at: int,
        ctx: dict[str, Any],
    ) -> int:
        self._check_open()
        for value, what in ((org, "org"), (t, "t"), (id, "id"), (op, "op")):
            values.check_text(value, what)
        values.check_opt_text(who, "who")
        values.check_int(at, "at")
        p_text, ctx_text = values.dumps(p, "p"), values.dumps(ctx, "ctx")

        def apply() -> int:
            tenant = self._tenant(org)
            tenant.last_sid += 1
            row = _FrameRow(tenant.last_sid, t, id, op, p_text, who, at, ctx_text)
            tenant.frames.append(row)
            self._outbox_row(org, row)
            return tenant.last_sid

        return int(await self._submit(apply, len(p_text) + len(ctx_text)))

    async def trim_frames(self, org: str, keep: int) -> int:
        self._check_open()
        values.check_text(org, "org")
        values.check_at_least(keep, "keep", 0)

        def apply() -> int:
            frames = self._tenant(org).frames
            dropped = max(0, len(frames) - keep)
            del frames[:dropped]
            return dropped

        return int(await self._submit(apply, 0))

    async def put_mutation(self, org: str, client_tx_id: str, result: dict[str, Any]) -> None:
        """Remember ``result``; the first result stored under a key wins."""
        self._check_open()
        values.check_text(org, "org")
        values.check_text(client_tx_id, "client_tx_id")
        text = values.dumps(result, "result")
        await self._submit(
            lambda: self._tenant(org).mutations.setdefault(client_tx_id, (text, None)), len(text)
        )

    async def put_version(
        self,
        org: str,
        name: str,
        state: bytes,
        *,
        authors: Sequence[str],
        label: str | None,
        at: int,
    ) -> VersionInfo | None:
        self._check_open()
        checked = versions.check_version(org, name, state, authors, label, at)

        def apply() -> VersionInfo | None:
            tenant = self._tenant(org)
            if name not in tenant.docs:
                return None
            self._last_version_id += 1
            info = versions.info_from_row(
                self._last_version_id,
                name,
                checked.at,
                checked.authors_json,
                checked.label,
                checked.state_vector,
                len(checked.state),
            )
            tenant.versions.setdefault(name, []).append((info, checked.state))
            return info

        return await self._submit(apply, len(checked.state))

    async def delete_versions(self, org: str, name: str, versions: Sequence[int]) -> int:
        self._check_open()
        values.check_key(org, name)
        ids = set()
        for version in versions:
            values.check_int(version, "version")
            ids.add(version)

        def apply() -> int:
            rows = self._tenant(org).versions.get(name, [])
            kept = [row for row in rows if row[0].version not in ids]
            dropped = len(rows) - len(kept)
            if rows:
                self._tenant(org).versions[name] = kept
            return dropped

        return int(await self._submit(apply, 0))

    # -- reads (of what is committed) ----------------------------------------------------

    async def load(self, org: str, name: str) -> StoredDoc | None:
        values.check_key(org, name)
        doc = (await self._read(org)).docs.get(name)
        if doc is None:
            return None
        return StoredDoc(
            snapshot=doc.snapshot,
            updates=[update for _, update in doc.log],
            last_update_id=doc.last_update_id,
        )

    async def list_versions(
        self, org: str, name: str, *, before: int | None = None, limit: int = 100
    ) -> list[VersionInfo]:
        versions.check_list_args(org, name, before, limit)
        rows = (await self._read(org)).versions.get(name, [])
        picked = [info for info, _ in reversed(rows) if before is None or info.version < before]
        return picked[:limit]

    async def get_version(
        self, org: str, name: str, version: int
    ) -> tuple[VersionInfo, bytes] | None:
        values.check_key(org, name)
        values.check_int(version, "version")
        for info, state in (await self._read(org)).versions.get(name, []):
            if info.version == version:
                return info, state
        return None

    async def has_doc(self, org: str, name: str) -> bool:
        values.check_key(org, name)
        return name in (await self._read(org)).docs

    async def updates_since(self, org: str, name: str, since: int) -> DocTail:
        values.check_key(org, name)
        values.check_int(since, "since")
        doc = (await self._read(org)).docs.get(name)
        if doc is None:
            return DocTail(snapshot=None, updates=[], last_update_id=0)
        if doc.snapshot is not None and since < doc.upto:  # the log before it is gone
            return DocTail(doc.snapshot, list(doc.log), doc.last_update_id)
        tail = [(update_id, update) for update_id, update in doc.log if update_id > since]
        return DocTail(snapshot=None, updates=tail, last_update_id=doc.last_update_id)

    async def list_docs(
        self, org: str, *, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> tuple[list[DocInfo], str | None]:
        values.check_text(org, "org")
        values.check_text(prefix, "prefix")
        values.check_at_least(limit, "limit", 1)
        after = paging.decode_cursor(cursor) if cursor is not None else None
        docs = (await self._read(org)).docs
        names = sorted(  # str order is code point order: the byte order of UTF-8
            n for n in docs if n.startswith(prefix) and (after is None or n > after)
        )
        return paging.split_page([_doc_info(n, docs[n]) for n in names[: limit + 1]], limit)

    async def frames_since(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> list[Frame]:
        return (await self.read_frames(org, since, limit=limit, t=t)).frames

    async def read_frames(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> FramePage:
        values.check_text(org, "org")
        values.check_int(since, "since")
        values.check_at_least(limit, "limit", 1)
        values.check_opt_text(t, "t")
        tenant = await self._read(org)
        rows = tenant.frames[bisect.bisect_right(tenant.frames, since, key=lambda r: r.sid) :]
        picked = [row for row in rows if t is None or row.t == t][:limit]
        oldest, newest = _bounds(tenant)
        return FramePage([_frame(org, row) for row in picked], oldest, newest)

    async def frame_bounds(self, org: str) -> tuple[int, int]:
        values.check_text(org, "org")
        return _bounds(await self._read(org))

    async def record_frames(
        self, org: str, t: str, id: str, since: int, *, limit: int = 10_000
    ) -> list[Frame]:
        values.check_record(org, t, id)
        values.check_int(since, "since")
        frames = (await self._read(org)).frames
        rows = [r for r in frames if r.sid > since and r.t == t and r.id == id][:limit]
        return [_frame(org, row) for row in rows]

    async def record_writers(
        self,
        org: str,
        t: str,
        id: str,
        since: int,
        fields: list[str],
        *,
        exclude: tuple[str | None, str | None],
    ) -> list[tuple[str | None, str | None, int]]:
        values.check_record(org, t, id)
        values.check_int(since, "since")
        for name in fields:
            values.check_text(name, "field")
        wanted = set(fields)
        newest: dict[str | None, tuple[str | None, int]] = {}  # field (None: delete) -> who, sid
        for row in (await self._read(org)).frames:
            if row.sid <= since or row.t != t or row.id != id:
                continue
            if (row.who, values.loads(row.ctx).get("client_id")) == exclude:
                continue  # the asking writer's own frame
            touched = [None] if row.op == "d" else [k for k in values.loads(row.p) if k in wanted]
            for key in touched:
                newest[key] = (row.who, row.sid)  # rows are in sid order: the last wins
        return [(key, who, sid) for key, (who, sid) in newest.items()]

    async def get_record(self, org: str, t: str, id: str) -> RecordRow | None:
        values.check_record(org, t, id)
        row = (await self._read(org)).records.get((t, id))
        return None if row is None else _record(t, id, row)

    async def list_records(
        self,
        org: str,
        *,
        t: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> tuple[list[RecordRow], int]:
        values.check_text(org, "org")
        values.check_opt_text(t, "t")
        values.check_at_least(limit, "limit", 1)
        tenant = await self._read(org)
        keys = sorted(
            k
            for k in tenant.records
            if (t is None or k[0] == t) and (after is None or k > tuple(after))
        )
        rows = [_record(*key, tenant.records[key]) for key in keys[:limit]]
        return rows, _bounds(tenant)[1]

    async def stale_records(self, limit: int = 1000) -> list[tuple[str, str]]:
        """Record docs (``t/id``, both non-empty) whose record row (if any) covers an
        older update than the doc's newest."""
        values.check_int(limit, "limit")
        await self._checkpoint()
        stale = []
        for org, tenant in self._tenants.items():
            for name, doc in tenant.docs.items():
                t, slash, id_ = name.partition("/")
                if not (t and slash and id_):
                    continue
                row = tenant.records.get((t, id_))
                if (row.update_id if row is not None else -1) < doc.last_update_id:
                    stale.append((org, name))
        return stale[:limit]

    async def get_mutation(self, org: str, client_tx_id: str) -> dict[str, Any] | None:
        values.check_text(org, "org")
        values.check_text(client_tx_id, "client_tx_id")
        stored = (await self._read(org)).mutations.get(client_tx_id)
        if stored is None:
            return None
        result = values.loads(stored[0])
        if stored[1] is not None and isinstance(result, dict):
            result["sid"] = stored[1]
        return result

    # -- webhooks (persistence.outbox) -------------------------------------------------

    def _outbox_row(self, org: str, row: _FrameRow) -> None:
        if not self._outbox or self._outbox_db is None:
            return
        text = outbox.frame_json(row.id, row.op, row.p, row.who, row.at, row.ctx)
        self._outbox_db.execute(
            "INSERT INTO webhook_outbox (org, sid, t, rid, frame, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (org, row.sid, row.t, row.id, text, values.now_ms()),
        )

    async def _outbox_run(self, make: Callable[[int], outbox.Op]) -> Any:
        """Run an outbox operation in commit order (behind every queued write)."""
        self._check_open()

        def apply() -> Any:
            assert self._outbox_db is not None
            return outbox.run_sync(self._outbox_db, make(values.now_ms()))

        return await self._submit(apply, 0)

    async def claim_delivery(
        self,
        endpoint: outbox.EndpointSpec,
        *,
        owner: str,
        lease_ms: int,
        max_batch: int,
        throttle_ms: int,
    ) -> outbox.Delivery | None:
        values.check_text(owner, "owner")
        return await self._outbox_run(
            lambda now: outbox.claim(
                endpoint,
                owner=owner,
                now=now,
                lease_ms=lease_ms,
                max_batch=max_batch,
                throttle_ms=throttle_ms,
                pg=False,
            )
        )

    async def finish_delivery(
        self,
        delivery_id: int,
        *,
        owner: str,
        outcome: str,
        next_attempt_at: int = 0,
        error: str | None = None,
        status: int | None = None,
        endpoints: Sequence[str] = (),
    ) -> bool:
        values.check_int(delivery_id, "delivery_id")
        ids = tuple(endpoints)
        return bool(
            await self._outbox_run(
                lambda now: outbox.finish(
                    delivery_id,
                    owner=owner,
                    outcome=outcome,
                    now=now,
                    next_attempt_at=next_attempt_at,
                    error=error,
                    status=status,
                    endpoints=ids,
                    pg=False,
                )
            )
        )

    async def replay_deliveries(
        self, delivery_id: int | None = None, *, org: str | None = None
    ) -> int:
        return int(await self._outbox_run(lambda now: outbox.replay(delivery_id, now=now, org=org)))

    async def webhook_status(self, endpoints: Sequence[str]) -> outbox.OutboxStatus:
        ids = tuple(endpoints)
        return await self._outbox_run(lambda now: outbox.status(ids))

    # -- the writer --------------------------------------------------------------------

    def _check_open(self) -> None:
        check_open(self._state, "MemoryStore")

    def _tenant(self, org: str) -> _Tenant:
        tenant = self._tenants.get(org)
        if tenant is None:
            tenant = self._tenants[org] = _Tenant()
        return tenant

    async def _read(self, org: str) -> _Tenant:
        """A checkpoint (as a database read would be), then what ``org`` has committed."""
        await self._checkpoint()
        return self._tenants.get(org) or _Tenant()

    async def _checkpoint(self) -> None:
        self._check_open()
        await asyncio.sleep(0)
        self._check_open()

    def _queue(self, apply: Callable[[], Any], size: int, *, write: bool = True) -> Commit[Any]:
        """Queue ``apply`` for the next commit (synchronously, in call order)."""
        assert self._loop is not None
        commit: Commit[Any] = Commit(loop=self._loop)
        self._pending.append(_Op(apply, commit, size, write))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._commit_pending)
        return commit

    async def _submit(self, apply: Callable[[], Any], size: int, *, write: bool = True) -> Any:
        self._check_open()
        return await self._queue(apply, size, write=write)

    def _commit_pending(self) -> None:
        """One group commit: run every queued op in order, then settle their commits."""
        self._scheduled = False
        ops, self._pending = self._pending, []
        began = time.monotonic()
        outcomes: list[tuple[Any, BaseException | None]] = []
        for op in ops:
            try:
                outcomes.append((op.apply(), None))
            except Exception as exc:  # an op computes before it changes: it fails alone
                self._failed_batches += 1
                logger.error("memory store: write failed: %r", exc)
                error = StoreWriteError(f"write failed: {exc}")
                error.__cause__ = exc
                outcomes.append((None, error))
        writes = sum(op.write for op in ops)
        if writes:
            self._commits += 1
            self._last_batch_size = writes
            self._last_commit_seconds = time.monotonic() - began
        for op, (result, error) in zip(ops, outcomes, strict=True):
            if error is None:
                op.commit.set_result(result)
            else:
                op.commit.set_exception(error)
                op.commit.exception()  # logged above; an unawaited commit stays quiet

    def _prepare(self, org: str, batch: FrameBatch) -> tuple[tuple[FrameDraft, ...], Any]:
        """Check ``batch`` before it is queued and copy it through JSON (what is stored)."""
        try:
            checked = prepared.prepare(org, batch)
        except values.UnstorableValue as exc:
            self._refused_batches += 1
            logger.error("memory store: frames refused (org=%r): %s", org, exc)
            raise
        drafts = tuple(
            replace(
                f.draft,
                p=values.loads(f.p),
                ctx=values.loads(f.ctx),
                record=None if f.record is None else values.loads(f.record),
            )
            for f in checked.frames
        )
        return drafts, checked.mutation

    def _log(
        self,
        org: str,
        tenant: _Tenant,
        prepared: tuple[tuple[FrameDraft, ...], Any],
        update_id: int | None,
    ) -> list[Frame]:
        """Log what is new of each draft (:func:`persistence.framing.settle`), fold it
        into its record row (:func:`persistence.framing.fold`), store the batch's key;
        inside the commit."""
        drafts, mutation = prepared
        logged = []
        for draft in drafts:
            key = (draft.t, draft.id)
            row = tenant.records.get(key)
            stored = None if row is None else values.loads(row.fields)
            d = settle(draft, stored, None if row is None else row.update_id)
            if d is None:
                continue
            tenant.last_sid += 1
            sid = tenant.last_sid
            p, ctx = values.dumps(d.p, "p"), values.dumps(d.ctx, "ctx")
            frame_row = _FrameRow(sid, d.t, d.id, d.op, p, d.who, d.at, ctx)
            tenant.frames.append(frame_row)
            self._outbox_row(org, frame_row)
            folded = fold(stored, d)
            if folded is None:
                tenant.records.pop(key, None)
            else:
                covered = framing.covered(
                    d,
                    update_id,
                    lambda name: _newest(tenant, name),
                    row.update_id if row is not None else None,
                )
                fields = values.dumps(folded, "record")
                tenant.records[key] = _RecordRow(fields, sid, covered, d.at)
            logged.append(_frame(org, frame_row))
        if mutation is not None:
            client_tx_id, result = mutation
            sid_of_last = logged[-1].sid if logged else None
            tenant.mutations.setdefault(client_tx_id, (result, sid_of_last))
        return logged


# -- helpers -----------------------------------------------------------------------------


def _delete_doc(tenant: _Tenant, name: str) -> bool:
    # Frames, record rows and idempotency keys stay: they are the feed's, not the doc's.
    if tenant.docs.pop(name, None) is None:
        return False
    tenant.versions.pop(name, None)  # a doc's versions go with it
    tenant.deleted.add(name)
    return True


def _newest(tenant: _Tenant, name: str) -> int:
    doc = tenant.docs.get(name)
    return doc.last_update_id if doc is not None else 0


def _bounds(tenant: _Tenant) -> tuple[int, int]:
    if not tenant.frames:
        return (0, 0)
    return (tenant.frames[0].sid - 1, tenant.frames[-1].sid)


def _frame(org: str, row: _FrameRow) -> Frame:
    p, ctx = values.loads(row.p), values.loads(row.ctx)
    return Frame(row.sid, org, row.t, row.id, row.op, p, row.who, row.at, ctx)


def _record(t: str, id: str, row: _RecordRow) -> RecordRow:
    return RecordRow(t, id, values.loads(row.fields), row.sid, row.update_id, row.updated_at)


def _doc_info(name: str, doc: _Doc) -> DocInfo:
    size = len(doc.snapshot or b"") + sum(len(update) for _, update in doc.log)
    return DocInfo(name=name, size=size, updated_at=doc.updated_at, update_count=len(doc.log))
