"""SQLite implementation of :class:`persistence.store.Store`: the async facade.

Threads and connections:

* **One writer thread** (:mod:`persistence.sqlite.writer`) owns one connection; every
  write goes through its FIFO queue and is group-committed (the SQL of writes is
  :mod:`persistence.sqlite.write_sql`).
* **Reads** run in anyio worker threads on a pool of read-only connections
  (:mod:`persistence.sqlite.reads`).

This module checks every argument on the event loop (a bad value fails only its own
call; once queued it would fail the whole batch it landed in), queues writes and
hands reads to the pool. :meth:`SQLiteStore.start` refuses to run on anything but
anyio's asyncio backend. What callers get for a queued write is a
:class:`persistence.store.Commit`: an awaiter that is cancelled abandons its wait,
never the commit's outcome (the writer commits the write anyway).

Ids are the backend's (store contract v2): update ids and sids are assigned by the
writer inside the transaction that commits them, from counters read under that
transaction's write lock (see :mod:`persistence.sqlite.write_sql`), and returned in
the commit (:class:`~persistence.store.Committed`, the frames of
:meth:`SQLiteStore.log_frames`). Nothing is counted in memory between transactions,
so several stores (processes) may write one file: SQLite serialises their
transactions and each reads the ids the others committed.

Durability window (DESIGN.md "Storage"): an op is on disk when its awaitable
completes (``synchronous=FULL``). An update whose ``durable`` has not completed
may be lost by ``kill -9`` or power loss: at most ``commit_interval_ms`` plus one
commit of updates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from persistence import outbox, paging, prepared, values, versions
from persistence.lifecycle import StartClose, check_open
from persistence.outbox import Delivery, EndpointSpec, OutboxStatus
from persistence.sqlite import reads, versions_sql
from persistence.sqlite.write_sql import Kind, Op
from persistence.sqlite.writer import Writer, rollback
from persistence.store import (
    Appended,
    Commit,
    Committed,
    DocInfo,
    DocTail,
    Frame,
    FrameBatch,
    FramePage,
    RecordRow,
    StoreClosedError,
    StoredDoc,
    StoreError,
    StoreStats,
    StoreWriteError,
    VersionInfo,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a connection waits for SQLite's locks (another process writing, a
#: checkpoint) before giving up with "database is locked".
BUSY_TIMEOUT_MS = 5000


class SQLiteStore(StartClose):
    """The crdt-sync store on one SQLite file (see the module docstring for the design).

    Use ``async with SQLiteStore(path) as store:`` or call :meth:`start` and
    :meth:`close`. All methods must be called from the event loop that ran
    :meth:`start` (anyio on its asyncio backend).

    Args:
        path: The database file. Its directory must exist; the file is created.
        commit_interval_ms: How long the writer waits for more ops after the first
            one of a batch before committing (0 = commit what is queued at once).
        max_batch: Most ops in one transaction.
        max_queued_bytes: Bytes of writes handed to the writer thread and not yet
            committed. Past it a writer waits for room (appends, every awaited write),
            in call order, so the queue cannot grow without bound when writes come
            faster than the disk takes them; one op alone is always let through.
        outbox: Give every frame logged a webhook outbox row in its transaction
            (:mod:`persistence.outbox`; on when webhooks are configured).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        commit_interval_ms: float = 5.0,
        max_batch: int = 5000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        outbox: bool = False,
    ) -> None:
        if max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be >= 1, got {max_queued_bytes}")
        if commit_interval_ms < 0:
            raise ValueError(f"commit_interval_ms must be >= 0, got {commit_interval_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._path = os.fsdecode(os.fspath(path))
        self._writer = Writer(
            self._path,
            interval=commit_interval_ms / 1000.0,
            max_batch=max_batch,
            max_queued_bytes=max_queued_bytes,
            busy_timeout_ms=BUSY_TIMEOUT_MS,
            outbox=outbox,
        )
        self._readers = reads.ReaderPool(self._path, busy_timeout_ms=BUSY_TIMEOUT_MS)
        self._state = "new"  # -> "starting" -> "open" -> "closed"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused_batches = 0

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def stats(self) -> StoreStats:
        """Counters of the writer (cheap; no I/O). ``queued`` is approximate."""
        writer = self._writer
        return StoreStats(
            failed_batches=writer.failed_batches,
            last_commit_seconds=writer.last_commit_seconds,
            last_batch_size=writer.last_batch_size,
            queued=writer.queued,
            queued_bytes=writer.queued_bytes,
            refused_batches=self._refused_batches,
            **writer.histograms.fields(),
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (creating or migrating its schema) and start the writer thread.

        Raises:
            StoreError: the directory does not exist, the file is not a crdt-sync
                database, its schema is newer than this code, or SQLite cannot open it.
        """
        if self._state != "new":
            raise StoreError(f"SQLiteStore({self._path!r}) can only be started once")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise StoreError("SQLiteStore needs anyio's asyncio backend") from None
        self._loop = loop
        self._state = "starting"
        started = self._writer.start(loop)
        # Shielded: opening is bounded by the busy timeout, and an abandoned writer
        # thread holding a connection is worse than a late cancellation.
        with anyio.CancelScope(shield=True):
            try:
                last_id = await started
            except BaseException:
                self._state = "closed"
                await anyio.to_thread.run_sync(self._writer.join)
                raise
            if self._state == "closed":  # close() was called while we were starting
                self._writer.put_stop()
                await anyio.to_thread.run_sync(self._writer.join)
                raise StoreClosedError(f"SQLiteStore({self._path!r}) was closed while starting")
        self._state = "open"
        logger.info("opened store %s (last update id %d)", self._path, last_id)

    async def close(self) -> None:
        """Commit everything queued, stop the writer thread and close every connection.

        Idempotent. Later calls of other methods raise :class:`StoreClosedError`.

        Raises:
            StoreWriteError: the final commit failed, or an append queued since the
                last :meth:`flush` failed (the store is closed all the same).
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._writer.admit(Op(Kind.STOP, (), done), wait=False)  # after every admitted write
        error: StoreWriteError | None = None
        with anyio.CancelScope(shield=True):
            if self._writer.is_alive():
                try:
                    await done
                except StoreWriteError as exc:
                    error = exc
            else:  # cannot happen short of a bug; do not wait for an answer forever
                logger.error("store %s: the writer thread is gone", self._path)
            await anyio.to_thread.run_sync(self._writer.join)
            self._readers.close()
        logger.info("closed store %s", self._path)
        if error is not None:
            raise error

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
        """Queue ``update`` for the next group commit.

        Nothing here yields to the event loop unless the writer queue is full
        (``max_queued_bytes``): then it waits for room. Either way calls made one after
        the other are committed in that order.

        Args:
            org: The tenant.
            name: The document name.
            update: A Yjs update (``bytes``, ``bytearray`` or ``memoryview``).
            actor: Who made the change (``who`` of the token).
            at: Epoch milliseconds of the change.
            frames: SyncFrames (and an idempotency key) to log in the same transaction.

        Returns:
            Its ``durable``: a :class:`~persistence.store.Commit` that completes once the
            update is committed, with its :class:`~persistence.store.Committed` (the
            update id assigned in that transaction, the doc's previous one, the frames
            logged with it), or raises :class:`StoreWriteError` if that commit fails. A
            cancelled awaiter does not cancel it. Nobody has to await it: a failure is
            logged, and reported by the next :meth:`flush`.

        Raises:
            persistence.values.UnstorableValue: a value of ``frames`` is not strict
                JSON (see :func:`persistence.values.dumps`); nothing was queued.
        """
        self._check_open()
        values.check_key(org, name)
        data = values.as_bytes(update, "update")
        values.check_opt_text(actor, "actor")
        values.check_int(at, "at")
        batch = self._prepare(org, name, frames) if frames is not None else None
        assert self._loop is not None
        future: Commit[Committed] = Commit(loop=self._loop)
        op = Op(Kind.APPEND, (org, name, data, actor, at), future, batch=batch)
        admitted = self._writer.admit(op, len(data) + prepared.batch_size(batch))
        if admitted is not None:
            # The queue is full: wait for room (the op keeps its place and still runs
            # if this wait is cancelled).
            await asyncio.shield(admitted)
        return Appended(durable=future)

    def atomic(self) -> AbstractContextManager[None]:
        """See :meth:`persistence.store.Store.atomic` (:meth:`Writer.group`)."""
        self._check_open()
        return self._writer.group()

    def log_frames(
        self, org: str, batch: FrameBatch, *, delete: str | None = None
    ) -> Commit[list[Frame]]:
        """Queue a batch of frames (and an idempotency key) for the next group commit.

        Synchronous, so that a caller can draft frames and queue them without the
        event loop running anything in between: frames of one org queued one after
        the other get increasing sids of that org in that order. It does not wait
        when the writer queue is full; it takes its place behind the writes that wait
        (its callers frame changes that came through those writes, which did wait).

        A draft without ``update_id`` covers its record doc's newest update at this
        point of the queue. Only what is new in a draft against its stored record
        row is logged (:func:`persistence.framing.settle`).

        Args:
            org: The tenant.
            batch: The frames, each with the record projection it leaves behind.
            delete: A document to delete (with its snapshot and log) in the same
                transaction: a record's ``d``.

        Returns:
            A :class:`~persistence.store.Commit` of the frames logged, with their sids,
            completed once committed (raises :class:`StoreWriteError` if the commit
            fails); a cancelled awaiter does not cancel it.

        Raises:
            persistence.values.UnstorableValue: a value of ``batch`` is not strict
                JSON; nothing was queued (the store never holds a frame it could not
                read back and encode).
        """
        self._check_open()
        values.check_text(org, "org")
        if delete is not None:
            values.check_key(org, delete)
        checked = self._prepare(org, delete, batch)
        assert self._loop is not None
        future: Commit[list[Frame]] = Commit(loop=self._loop)
        op = Op(Kind.FRAMES, (org, delete), future, batch=checked)
        # Never waits (it cannot: synchronous); behind every write waiting for room.
        self._writer.admit(op, prepared.batch_size(checked), wait=False)
        return future

    def _prepare(self, org: str, name: str | None, batch: FrameBatch) -> prepared.PreparedBatch:
        """Check and serialise ``batch``; a refusal is logged and counted once here."""
        try:
            return prepared.prepare(org, batch)
        except values.UnstorableValue as exc:
            self._refused_batches += 1
            logger.error("store %s: frames refused (org=%r doc=%r): %s", self._path, org, name, exc)
            raise

    async def flush(self) -> None:
        """Wait until every write queued before this call is committed.

        Raises:
            StoreWriteError: the commit of a write queued before this call failed, or
                an append queued since the previous flush failed (even if its
                ``durable`` was never awaited).
        """
        await self._submit(Kind.FLUSH, ())

    async def compact(self, org: str, name: str, state: bytes) -> None:
        """Fold the doc's log into its snapshot, in one transaction queued behind every
        earlier write.

        The transaction drops exactly the log rows the doc holds when it runs: in
        queue order, the updates appended before this call (and any another store
        committed to the file before it). Each dropped row is merged into the new
        snapshot with ``state`` (:func:`pycrdt.merge_updates`), so nothing logged is
        lost even if ``state`` lacks it; merging what ``state`` holds already changes
        nothing. The doc's newest update id is unchanged.

        Creates the doc if it was never stored; a deleted doc stays deleted (the
        compaction does nothing). The doc's ``updated_at`` is not changed: its content
        is not.

        Args:
            org: The tenant.
            name: The document name.
            state: The document's state (a Yjs update) holding at least everything
                appended to it before this call.

        Raises:
            StoreWriteError: the transaction failed (nothing changed).
            StoreReadError: a log row of the doc is not a readable update (nothing
                changed; the other writes of its batch are committed).
        """
        self._check_open()
        values.check_key(org, name)
        data = values.as_bytes(state, "state")
        await self._submit(Kind.COMPACT, (org, name, data, values.now_ms()), len(data))

    async def delete(self, org: str, name: str) -> bool:
        """Delete a doc with its snapshot and update log, in one transaction.

        Args:
            org: The tenant.
            name: The document name.

        Returns:
            ``True`` if the doc existed.

        Raises:
            StoreWriteError: the transaction failed (nothing deleted).
        """
        self._check_open()
        values.check_key(org, name)
        return bool(await self._submit(Kind.DELETE, (org, name)))

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
        """Log a SyncFrame; its ``sid`` (the next of ``org``) is assigned in the writer
        transaction.

        Args:
            org: The tenant.
            t: Record type.
            id: Record id.
            op: ``"i"``, ``"u"`` or ``"d"``.
            p: Changed fields (JSON-serialisable; NaN and infinities are refused).
            who: The actor.
            at: Epoch milliseconds.
            ctx: Context such as ``{"client_tx_id": …}`` (JSON-serialisable).

        Returns:
            The frame's ``sid``, once committed.

        Raises:
            StoreWriteError: the transaction failed.
        """
        self._check_open()
        for value, what in ((org, "org"), (t, "t"), (id, "id"), (op, "op")):
            values.check_text(value, what)
        values.check_opt_text(who, "who")
        values.check_int(at, "at")
        args = (org, t, id, op, values.dumps(p, "p"), who, at, values.dumps(ctx, "ctx"))
        return int(await self._submit(Kind.FRAME, args, len(args[4]) + len(args[7])))

    async def trim_frames(self, org: str, keep: int) -> int:
        """Delete all but the newest ``keep`` frames of ``org``.

        Args:
            org: The tenant.
            keep: How many of the newest frames to keep (>= 0).

        Returns:
            How many frames were deleted.

        Raises:
            StoreWriteError: the transaction failed.
        """
        self._check_open()
        values.check_text(org, "org")
        values.check_at_least(keep, "keep", 0)
        return int(await self._submit(Kind.TRIM, (org, keep)))

    async def put_mutation(self, org: str, client_tx_id: str, result: dict[str, Any]) -> None:
        """Remember a mutation's result under its idempotency key, once committed.

        The first result stored under a key wins; later puts of the same key are
        ignored, so a replay can never change what was answered the first time.

        Args:
            org: The tenant.
            client_tx_id: The client's idempotency key.
            result: The response to replay (JSON-serialisable).

        Raises:
            StoreWriteError: the transaction failed.
        """
        self._check_open()
        values.check_text(org, "org")
        values.check_text(client_tx_id, "client_tx_id")
        await self._submit(
            Kind.MUTATION, (org, client_tx_id, values.dumps(result, "result"), values.now_ms())
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
        """Store a version of the doc (see :class:`~persistence.store.Store`), in its own
        transaction on the writer thread, behind every write queued before the call."""
        self._check_open()
        checked = versions.check_version(org, name, state, authors, label, at)
        write = partial(versions_sql.put_version, path=self._path, org=org, name=name, v=checked)
        return await self.run_in_writer(lambda conn: write(conn))

    async def delete_versions(self, org: str, name: str, versions: Sequence[int]) -> int:
        """Delete these versions of the doc; how many were deleted, once committed."""
        self._check_open()
        values.check_key(org, name)
        ids = sorted({_version_id(v) for v in versions})
        return await self.run_in_writer(
            lambda conn: versions_sql.delete_versions(conn, self._path, org, name, ids)
        )

    async def list_versions(
        self, org: str, name: str, *, before: int | None = None, limit: int = 100
    ) -> list[VersionInfo]:
        """The doc's versions with an id below ``before``, newest first."""
        versions.check_list_args(org, name, before, limit)
        return await self._read(versions_sql.list_versions, org, name, before, limit)

    async def get_version(
        self, org: str, name: str, version: int
    ) -> tuple[VersionInfo, bytes] | None:
        """A version of the doc and its state, or ``None``."""
        values.check_key(org, name)
        values.check_int(version, "version")
        return await self._read(versions_sql.get_version, org, name, version)

    def health(self) -> str | None:
        """What stops this store from taking writes now, or ``None`` (cheap, no I/O).

        ``"write failing"`` after a failed batch, until a later batch or
        :meth:`probe` commits.
        """
        if self._state != "open":
            return f"store {self._state}"
        if not self._writer.is_alive():
            return "store writer thread stopped"
        if self._writer.write_failing:
            return "write failing"
        return None

    async def probe(self) -> None:
        """Commit a one-row write (``schema_version`` set to itself): the store takes writes.

        Queued behind every earlier write. On success the failing state of
        :meth:`health` is cleared.

        Raises:
            StoreWriteError: the probe could not be committed.
        """

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE schema_version SET version = version")
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback(conn, self._path)
                self._writer.write_failing = True
                raise StoreWriteError(f"write to {self._path} failed: {exc}") from exc
            self._writer.write_failing = False

        await self.run_in_writer(write)

    async def run_in_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread, between two transactions.

        For tests and maintenance (``PRAGMA max_page_count`` to simulate a full disk,
        ``PRAGMA wal_checkpoint(TRUNCATE)``, …). Writes queued before the call are
        committed first. ``fn`` must leave no transaction open.

        Args:
            fn: Called with the writer's ``sqlite3.Connection`` (autocommit mode).

        Returns:
            What ``fn`` returned (its exception is raised here).
        """
        self._check_open()
        result: T = await self._submit(Kind.CALL, (fn,))
        return result

    # -- webhooks (persistence.outbox) -------------------------------------------------

    async def claim_delivery(
        self,
        endpoint: EndpointSpec,
        *,
        owner: str,
        lease_ms: int,
        max_batch: int,
        throttle_ms: int,
    ) -> Delivery | None:
        """See :meth:`persistence.store.Store.claim_delivery`."""
        values.check_text(owner, "owner")
        op = partial(
            outbox.claim,
            endpoint,
            owner=owner,
            lease_ms=lease_ms,
            max_batch=max_batch,
            throttle_ms=throttle_ms,
            pg=False,
        )
        return await self.run_in_writer(lambda conn: outbox.run_sync(conn, op(now=values.now_ms())))

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
        """See :meth:`persistence.store.Store.finish_delivery`."""
        values.check_int(delivery_id, "delivery_id")
        op = partial(
            outbox.finish,
            delivery_id,
            owner=owner,
            outcome=outcome,
            next_attempt_at=next_attempt_at,
            error=error,
            status=status,
            endpoints=tuple(endpoints),
            pg=False,
        )
        return await self.run_in_writer(lambda conn: outbox.run_sync(conn, op(now=values.now_ms())))

    async def replay_deliveries(
        self, delivery_id: int | None = None, *, org: str | None = None
    ) -> int:
        """See :meth:`persistence.store.Store.replay_deliveries`."""
        return await self.run_in_writer(
            lambda conn: outbox.run_sync(
                conn, outbox.replay(delivery_id, now=values.now_ms(), org=org)
            )
        )

    async def webhook_status(self, endpoints: Sequence[str]) -> OutboxStatus:
        """See :meth:`persistence.store.Store.webhook_status`."""
        ids = tuple(endpoints)
        return await self.run_in_writer(lambda conn: outbox.run_sync(conn, outbox.status(ids)))

    # -- reads -------------------------------------------------------------------------

    async def load(self, org: str, name: str) -> StoredDoc | None:
        """Return the doc's snapshot and the updates logged after it, oldest first.

        Args:
            org: The tenant.
            name: The document name.

        Returns:
            The stored doc, or ``None`` if there is no such doc.

        Raises:
            StoreReadError: the rows exist but cannot be read (corrupt row or file).
        """
        values.check_key(org, name)
        return await self._read(reads.load_doc, org, name)

    async def has_doc(self, org: str, name: str) -> bool:
        """Whether the doc is stored (one primary-key lookup: nothing is loaded)."""
        values.check_key(org, name)
        return await self._read(reads.has_doc, org, name)

    async def updates_since(self, org: str, name: str, since: int) -> DocTail:
        """What a replica holding the doc up to update ``since`` lacks (gap repair).

        Args:
            org: The tenant.
            name: The document name.
            since: The newest update id the replica holds (0: none).

        Returns:
            The updates logged after ``since``, oldest first, with their ids; if some of
            them were compacted, the snapshot too (apply it, then the updates after
            it). ``last_update_id`` is the doc's newest (0: no such doc).

        Raises:
            StoreReadError: the rows exist but cannot be read.
        """
        values.check_key(org, name)
        values.check_at_least(since, "since", 0)
        return await self._read(reads.updates_since, org, name, since)

    async def list_docs(
        self, org: str, *, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> tuple[list[DocInfo], str | None]:
        """Docs of ``org`` whose name starts with ``prefix``, ordered by name.

        Args:
            org: The tenant.
            prefix: Only names starting with it (compared literally: no wildcards).
            limit: Page size (>= 1).
            cursor: The cursor returned with the previous page, or ``None``.

        Returns:
            ``(page, next cursor)``; the cursor is ``None`` on the last page.

        Raises:
            ValueError: ``cursor`` is not one this store returned, or ``limit`` < 1.
            StoreReadError: the database cannot be read.
        """
        values.check_text(org, "org")
        values.check_text(prefix, "prefix")
        values.check_at_least(limit, "limit", 1)
        after = paging.decode_cursor(cursor) if cursor is not None else None
        rows = await self._read(
            reads.list_docs, org, prefix, paging.prefix_end(prefix), after, limit + 1
        )
        return paging.split_page(rows, limit)

    async def frames_since(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> list[Frame]:
        """Frames of ``org`` with ``sid > since`` (only of type ``t`` if given), oldest first.

        Args:
            org: The tenant.
            since: The last sid the caller has.
            limit: Most frames returned (>= 1).
            t: Only frames of this record type.

        Returns:
            Up to ``limit`` frames in sid order.

        Raises:
            StoreReadError: a frame row cannot be read.
        """
        return (await self.read_frames(org, since, limit=limit, t=t)).frames

    async def read_frames(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> FramePage:
        """Frames with ``sid > since`` and the log's bounds, read in one transaction.

        Args:
            org: The tenant.
            since: The last sid the caller has.
            limit: Most frames returned (>= 1).
            t: Only frames of this record type (the bounds are the tenant's).

        Returns:
            The page: when it holds fewer than ``limit`` frames, the caller has every
            frame up to ``newest``.
        """
        values.check_text(org, "org")
        values.check_int(since, "since")
        values.check_at_least(limit, "limit", 1)
        values.check_opt_text(t, "t")
        return await self._read(reads.read_frames, org, since, limit, t)

    async def record_frames(
        self, org: str, t: str, id: str, since: int, *, limit: int = 10_000
    ) -> list[Frame]:
        """Frames of record ``(t, id)`` with ``sid > since``, oldest first (at most ``limit``)."""
        values.check_record(org, t, id)
        values.check_int(since, "since")
        return await self._read(reads.record_frames, org, t, id, since, limit)

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
        """Who else wrote ``fields`` of record ``(t, id)`` after sid ``since``.

        Answered from the record's frame index without decoding frames (``base_sid``
        conflict checks; :meth:`record_frames` would decode every frame since).

        Args:
            fields: The field names of interest.
            exclude: ``(who, client_id)`` of the asking writer: its own frames.

        Returns:
            ``(field, who, sid)``: per field of ``fields`` set by another writer, its
            newest such frame; ``(None, who, sid)``: the newest delete of the record by
            another writer (it touched every field). Unordered.
        """
        values.check_record(org, t, id)
        values.check_int(since, "since")
        for name in fields:
            values.check_text(name, "field")
        who, client_id = exclude
        values.check_opt_text(who, "who")
        values.check_opt_text(client_id, "client_id")
        return await self._read(reads.record_writers, org, t, id, since, fields, exclude)

    async def get_record(self, org: str, t: str, id: str) -> RecordRow | None:
        """The stored projection of record ``(t, id)``, or ``None`` if it does not exist."""
        values.check_record(org, t, id)
        return await self._read(reads.get_record, org, t, id)

    async def list_records(
        self,
        org: str,
        *,
        t: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> tuple[list[RecordRow], int]:
        """Records of ``org`` (of type ``t``) ordered by ``(t, id)``, after ``after``.

        Returns:
            ``(rows, newest sid)`` read in one transaction: the rows include every
            frame up to that sid.
        """
        values.check_text(org, "org")
        values.check_opt_text(t, "t")
        values.check_at_least(limit, "limit", 1)
        return await self._read(reads.list_records, org, t, after, limit)

    async def stale_records(self, limit: int = 1000) -> list[tuple[str, str]]:
        """``(org, name)`` of record docs whose stored projection lags their update log."""
        values.check_int(limit, "limit")
        return await self._read(reads.stale_records, limit)

    async def frame_bounds(self, org: str) -> tuple[int, int]:
        """``(oldest retained sid - 1, newest sid)`` of ``org``; ``(0, 0)`` if it has none.

        Args:
            org: The tenant.

        Returns:
            The bounds: a client with ``since`` below the first value missed frames.
        """
        values.check_text(org, "org")
        return await self._read(reads.frame_bounds, org)

    async def get_mutation(self, org: str, client_tx_id: str) -> dict[str, Any] | None:
        """The stored result of a mutation with this idempotency key, if any.

        Args:
            org: The tenant.
            client_tx_id: The client's idempotency key.

        Returns:
            The result given to :meth:`put_mutation`, or ``None``.

        Raises:
            StoreReadError: the stored result cannot be read.
        """
        values.check_text(org, "org")
        values.check_text(client_tx_id, "client_tx_id")
        return await self._read(reads.get_mutation, org, client_tx_id)

        # -- event-loop side plumbing ------------------------------------------------------

    def _check_open(self) -> None:
        check_open(self._state, f"SQLiteStore({self._path!r})")

    async def _submit(self, kind: Kind, args: tuple[Any, ...], size: int = 0) -> Any:
        self._check_open()
        # If the caller is cancelled the op still runs and is settled; only the wait is
        # abandoned (a Commit is not cancelled by its awaiters).
        return await self._writer.submit(kind, args, size)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await anyio.to_thread.run_sync(self._readers.run, fn, args)


def _version_id(value: object) -> int:
    values.check_int(value, "version")
    return value  # type: ignore[return-value]
