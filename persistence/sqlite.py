"""SQLite implementation of :class:`persistence.store.Store`.

Threads and connections:

* **One writer thread** owns one ``sqlite3`` connection (opened, migrated and closed
  in that thread). Every write goes through a FIFO queue to it. It takes what is
  queued (up to ``max_batch`` ops), waits up to ``commit_interval_ms`` for more, and
  runs the whole batch in ONE ``BEGIN IMMEDIATE`` … ``COMMIT`` (group commit: one
  fsync for many updates). Then it settles every op of the batch at once.
* **Reads** run in anyio worker threads on a small pool of read-only connections
  (``check_same_thread=False``; a connection is used by one thread at a time, it is
  taken from and returned to the pool under a lock). WAL lets them run while the
  writer commits; each read starts a new read transaction, so it sees every commit
  that finished before it began, in particular every write whose awaitable completed.

Handing results back: the writer settles ``asyncio.Future`` objects with ONE
``loop.call_soon_threadsafe`` per batch. crdt-sync runs anyio on its asyncio backend
only (DESIGN.md), so asyncio futures are fine here and cost no thread per op;
:meth:`SQLiteStore.start` refuses to run on another backend. What callers get for a
queued write is a :class:`persistence.store.Commit`: an awaiter that is cancelled
abandons its wait, never the commit's outcome (the writer commits the write anyway).

Update ids: :meth:`SQLiteStore.append` must return the id before the commit (callers
compact "up to" it), so ids come from an in-memory counter initialised from the
database at start and rows are inserted with explicit ids. ``AUTOINCREMENT`` keeps
``sqlite_sequence`` above every id ever used, so ids are never reused after deletes.
Consequence: **one writing SQLiteStore per database file.** A second instance can
open the same file safely (schema creation is serialised) and read, but appends
from both would collide; a collision fails that batch with :class:`StoreWriteError`
(never overwrites) and the counter resynchronises with the file for later appends.

Failure model: a failing batch (disk full, read-only file, I/O error, …) is rolled
back, logged once, and every op in it raises :class:`StoreWriteError`; the writer
keeps running and tries later batches again. :meth:`SQLiteStore.flush` also raises
if an append queued since the previous flush failed, so a caller that never awaits
the ``durable`` of its appends still learns about it at its next checkpoint.

Durability window (DESIGN.md "Storage"): an op is on disk when its awaitable
completes (``synchronous=FULL``). An update whose ``durable`` has not completed
may be lost by ``kill -9`` or power loss: at most ``commit_interval_ms`` plus one
commit of updates.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlite_utils import Database

from persistence import sqlite_frames as frame_sql
from persistence import sqlite_reads as reads
from persistence import values
from persistence.schema import migrate
from persistence.store import (
    Appended,
    Commit,
    DocInfo,
    Frame,
    FrameBatch,
    FramePage,
    RecordRow,
    StoreClosedError,
    StoredDoc,
    StoreError,
    StoreReadError,
    StoreWriteError,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a connection waits for SQLite's locks (another process writing, a
#: checkpoint) before giving up with "database is locked".
BUSY_TIMEOUT_MS = 5000


class _Kind(enum.Enum):
    APPEND = "append"
    COMPACT = "compact"
    DELETE = "delete"
    FRAME = "frame"
    FRAMES = "frames"  # a FrameBatch on its own (coalesced frames, idempotency keys)
    MUTATION = "mutation"
    TRIM = "trim"
    FLUSH = "flush"  # barrier: commit what came before, report failures
    CALL = "call"  # barrier: commit what came before, then run a function (tests, maintenance)
    STOP = "stop"  # barrier: commit what came before, then close the connection and exit


_BARRIERS = frozenset({_Kind.FLUSH, _Kind.CALL, _Kind.STOP})


@dataclass(slots=True, eq=False)
class _Op:
    kind: _Kind
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    result: Any = None
    error: BaseException | None = None
    batch: frame_sql.PreparedBatch | None = None  # frames logged in the same transaction
    committed: list[Frame] | None = None  # those frames, with their sids, once written
    size: int = 0  # bytes counted against max_queued_bytes while it is queued


#: What an op costs in the writer queue besides its data (the op, its future, rows).
OP_OVERHEAD = 256


def _batch_size(batch: frame_sql.PreparedBatch | None) -> int:
    if batch is None:
        return 0
    size = sum(len(f.p) + len(f.ctx) + len(f.record or "") for f in batch.frames)
    return size + (len(batch.mutation[1]) if batch.mutation is not None else 0)


class SQLiteStore:
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
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        commit_interval_ms: float = 5.0,
        max_batch: int = 5000,
        max_queued_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be >= 1, got {max_queued_bytes}")
        if commit_interval_ms < 0:
            raise ValueError(f"commit_interval_ms must be >= 0, got {commit_interval_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._path = os.fsdecode(os.fspath(path))
        self._interval = commit_interval_ms / 1000.0
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        # Event-loop side of the bound on the writer queue: bytes of the ops handed to
        # the writer and not settled yet, and the ops waiting (in call order) for room.
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._backlog: deque[tuple[_Op, asyncio.Future[None] | None]] = deque()
        self._state = "new"  # -> "starting" -> "open" -> "closed"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        # Guards the id counter, so ids and queue order agree (the writer also bumps
        # it after a failed batch).
        self._id_lock = threading.Lock()
        self._last_update_id = 0
        self._readers_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        # Writer-thread state: message of a failed batch no flush has reported yet.
        self._unreported_failure: str | None = None
        self._commits = 0
        self._failed_batches = 0
        self._last_batch_size = 0
        self._last_commit_seconds = 0.0
        self._write_failing = False  # the last write batch (or probe) failed
        self._refused_batches = 0
        self._listener_failures = 0
        self._frame_listeners: list[Callable[[list[Frame]], None]] = []
        self._commit_listeners: list[Callable[[int, float], None]] = []

    # -- metrics -----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def commits(self) -> int:
        """Transactions committed by the writer since :meth:`start`."""
        return self._commits

    @property
    def failed_batches(self) -> int:
        """Batches rolled back because a write failed."""
        return self._failed_batches

    @property
    def last_batch_size(self) -> int:
        """Write ops in the last committed transaction."""
        return self._last_batch_size

    @property
    def last_commit_seconds(self) -> float:
        """Wall time of the last committed transaction, ``BEGIN`` to ``COMMIT`` (with fsync)."""
        return self._last_commit_seconds

    @property
    def refused_batches(self) -> int:
        """Frame batches refused before queueing: a value in them is not strict JSON."""
        return self._refused_batches

    @property
    def listener_failures(self) -> int:
        """Frame listener calls that raised (their subscribers are told by the listener)."""
        return self._listener_failures

    @property
    def queued(self) -> int:
        """Ops waiting for the writer (approximate), those waiting for room included."""
        return self._queue.qsize() + len(self._backlog)

    @property
    def queued_bytes(self) -> int:
        """Bytes of writes handed to the writer and not yet settled."""
        return self._queued_bytes

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> SQLiteStore:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

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
        started: asyncio.Future[int] = loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main,
            args=(started,),
            name=f"sqlite-writer {os.path.basename(self._path)}",
            # Not joined at interpreter exit: a store nobody closed must not hang the
            # process. close() is what makes queued writes durable.
            daemon=True,
        )
        self._writer.start()
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
                self._queue.put(_Op(_Kind.STOP, (), None))
                await anyio.to_thread.run_sync(self._writer.join)
                raise StoreClosedError(f"SQLiteStore({self._path!r}) was closed while starting")
        with self._id_lock:
            self._last_update_id = last_id
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
        assert self._loop is not None and self._writer is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._admit(_Op(_Kind.STOP, (), done), wait=False)  # after every admitted write
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
            self._close_idle_readers()
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
        """Queue ``update`` for the next group commit and return its id.

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
            The assigned update id and an awaitable that completes once the update is
            committed (raises :class:`StoreWriteError` if that commit fails) with the
            sids of ``frames`` (a :class:`~persistence.store.Commit`: a cancelled
            awaiter does not cancel it). Nobody has to await it: a failure is logged,
            and reported by the next :meth:`flush`.

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
        future: Commit[list[int]] = Commit(loop=self._loop)
        size = len(data) + _batch_size(batch)
        with self._id_lock:
            self._last_update_id += 1
            update_id = self._last_update_id
            # Inside the lock so that queue order is id order.
            op = _Op(_Kind.APPEND, (update_id, org, name, data, actor, at), future, batch=batch)
            admitted = self._admit(op, size)
        if admitted is not None:
            # The queue is full: wait for room (the op keeps its place and still runs
            # if this wait is cancelled).
            await asyncio.shield(admitted)
        return Appended(update_id=update_id, durable=future)

    def log_frames(
        self, org: str, batch: FrameBatch, *, delete: str | None = None
    ) -> Commit[list[int]]:
        """Queue a batch of frames (and an idempotency key) for the next group commit.

        Synchronous, so that a caller can draft frames and queue them without the
        event loop running anything in between: frames of one org queued one after
        the other get increasing sids of that org in that order. It does not wait
        when the writer queue is full; it takes its place behind the writes that wait
        (its callers frame changes that came through those writes, which did wait).

        Args:
            org: The tenant.
            batch: The frames, each with the record projection it leaves behind.
            delete: A document to delete (with its snapshot and log) in the same
                transaction: a record's ``d``.

        Returns:
            A :class:`~persistence.store.Commit` of the frames' sids, completed once
            committed (raises :class:`StoreWriteError` if the commit fails); a
            cancelled awaiter does not cancel it.

        Raises:
            persistence.values.UnstorableValue: a value of ``batch`` is not strict
                JSON; nothing was queued (the store never holds a frame it could not
                read back and encode).
        """
        self._check_open()
        values.check_text(org, "org")
        if delete is not None:
            values.check_key(org, delete)
        prepared = self._prepare(org, delete, batch)
        assert self._loop is not None
        future: Commit[list[int]] = Commit(loop=self._loop)
        op = _Op(_Kind.FRAMES, (org, delete), future, batch=prepared)
        # Never waits (it cannot: synchronous); behind every write waiting for room.
        self._admit(op, _batch_size(prepared), wait=False)
        return future

    def _prepare(self, org: str, name: str | None, batch: FrameBatch) -> frame_sql.PreparedBatch:
        """Check and serialise ``batch``; a refusal is logged and counted once here."""
        try:
            return frame_sql.prepare(org, batch)
        except values.UnstorableValue as exc:
            self._refused_batches += 1
            logger.error("store %s: frames refused (org=%r doc=%r): %s", self._path, org, name, exc)
            raise

    def add_commit_listener(self, listener: Callable[[int, float], None]) -> None:
        """Call ``listener(ops, seconds)`` after every committed transaction.

        It runs on the writer thread, between commits: it must be quick and thread-safe
        (a metrics histogram).
        """
        self._commit_listeners.append(listener)

    def add_frame_listener(self, listener: Callable[[list[Frame]], None]) -> None:
        """Call ``listener(frames)`` on the event loop with the frames of every commit,
        in commit order (so in sid order within each org), before the writers'
        awaitables complete."""
        self._frame_listeners.append(listener)

    async def flush(self) -> None:
        """Wait until every write queued before this call is committed.

        Raises:
            StoreWriteError: the commit of a write queued before this call failed, or
                an append queued since the previous flush failed (even if its
                ``durable`` was never awaited).
        """
        await self._submit(_Kind.FLUSH, ())

    async def compact(self, org: str, name: str, state: bytes, upto_update_id: int) -> None:
        """Replace the doc's snapshot by ``state`` and drop log rows with id <= ``upto_update_id``.

        One transaction, queued behind earlier appends. Creates the doc if it does not
        exist. The doc's ``updated_at`` is not changed: its content is not.

        Args:
            org: The tenant.
            name: The document name.
            state: The full document state (a Yjs update) covering every update up to
                and including ``upto_update_id``.
            upto_update_id: The newest update id folded into ``state``.

        Raises:
            ValueError: ``upto_update_id`` was never returned by :meth:`append`.
            StoreWriteError: the transaction failed (nothing changed).
        """
        self._check_open()
        values.check_key(org, name)
        data = values.as_bytes(state, "state")
        values.check_int(upto_update_id, "upto_update_id")
        # An id this store has not handed out yet would hide later appends (load()
        # returns only log rows after the snapshot's id).
        if not 0 <= upto_update_id <= self._last_update_id:
            raise ValueError(
                f"upto_update_id {upto_update_id} is not an update id of this store "
                f"(0..{self._last_update_id})"
            )
        args = (org, name, data, upto_update_id, values.now_ms())
        await self._submit(_Kind.COMPACT, args, len(data))

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
        return bool(await self._submit(_Kind.DELETE, (org, name)))

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
        return int(await self._submit(_Kind.FRAME, args, len(args[4]) + len(args[7])))

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
        values.check_int(keep, "keep")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        return int(await self._submit(_Kind.TRIM, (org, keep)))

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
            _Kind.MUTATION, (org, client_tx_id, values.dumps(result, "result"), values.now_ms())
        )

    def health(self) -> str | None:
        """What stops this store from taking writes now, or ``None`` (cheap, no I/O).

        ``"write failing"`` after a failed batch, until a later batch or
        :meth:`probe` commits.
        """
        if self._state != "open":
            return f"store {self._state}"
        if self._writer is None or not self._writer.is_alive():
            return "store writer thread stopped"
        if self._write_failing:
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
                _rollback(conn, self._path)
                self._write_failing = True
                raise StoreWriteError(f"write to {self._path} failed: {exc}") from exc
            self._write_failing = False

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
        result: T = await self._submit(_Kind.CALL, (fn,))
        return result

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
        values.check_int(limit, "limit")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        after = reads.decode_cursor(cursor) if cursor is not None else None
        rows = await self._read(
            reads.list_docs, org, prefix, reads.prefix_end(prefix), after, limit + 1
        )
        page = rows[:limit]
        next_cursor = reads.encode_cursor(page[-1].name) if len(rows) > limit else None
        return page, next_cursor

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
        values.check_int(limit, "limit")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
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
        values.check_int(limit, "limit")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
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
        if self._state == "open":
            return
        if self._state in ("new", "starting"):
            raise StoreError(f"SQLiteStore({self._path!r}) is not started; call start() first")
        raise StoreClosedError(f"SQLiteStore({self._path!r}) is closed")

    async def _submit(self, kind: _Kind, args: tuple[Any, ...], size: int = 0) -> Any:
        self._check_open()
        assert self._loop is not None
        future: Commit[Any] = Commit(loop=self._loop)
        self._admit(_Op(kind, args, future), size, wait=False)
        # If the caller is cancelled the op still runs and is settled; only the wait is
        # abandoned (a Commit is not cancelled by its awaiters).
        return await future

    def _admit(self, op: _Op, size: int = 0, *, wait: bool = True) -> asyncio.Future[None] | None:
        """Hand ``op`` to the writer, or put it in line behind the ops waiting for room.

        Returns:
            ``None`` if handed over now; else (``wait``) a future completed when it is.
        """
        op.size = size + OP_OVERHEAD
        if not self._backlog and (
            self._queued_bytes == 0 or self._queued_bytes + op.size <= self._max_queued_bytes
        ):
            self._queued_bytes += op.size
            self._queue.put(op)
            return None
        assert self._loop is not None
        admitted = self._loop.create_future() if wait else None
        self._backlog.append((op, admitted))
        return admitted

    def _release(self, ops: Sequence[_Op]) -> None:
        """``ops`` left the writer: hand over the waiting ops that fit now, in order."""
        for op in ops:
            self._queued_bytes -= op.size
            op.size = 0
        backlog = self._backlog
        while backlog:
            op, admitted = backlog[0]
            if self._queued_bytes and self._queued_bytes + op.size > self._max_queued_bytes:
                break
            backlog.popleft()
            self._queued_bytes += op.size
            self._queue.put(op)
            if admitted is not None and not admitted.done():
                admitted.set_result(None)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await anyio.to_thread.run_sync(self._read_in_thread, fn, args)

    def _settle(self, ops: Sequence[_Op]) -> None:
        """Runs on the event loop: announce committed frames, complete the futures of ``ops``."""
        self._release(ops)
        committed = [frame for op in ops if op.committed for frame in op.committed]
        if committed:
            for listener in self._frame_listeners:
                try:
                    listener(committed)
                except Exception:
                    # Writers must not hang on a listener's bug; it is counted (metrics,
                    # /healthz) and logged with the sids whose announcement it broke
                    # (per org: every org has its own sids).
                    self._listener_failures += 1
                    logger.exception(
                        "store %s: frame listener failed on sids %s (%r)",
                        self._path,
                        _sid_ranges(committed),
                        listener,
                    )
        for op in ops:
            future = op.future
            # Done already: settled by the store itself (a Commit is never cancelled by
            # an abandoned await; a plain future, e.g. close()'s, could be).
            if future is None or future.done():
                continue
            if op.error is None:
                future.set_result(op.result)
                continue
            error = op.error
            if isinstance(error, StoreWriteError):
                # One exception object per future: raising a shared one from many
                # tasks would chain unrelated tracebacks onto it.
                copy = StoreWriteError(*error.args)
                copy.__cause__ = error.__cause__
                error = copy
            future.set_exception(error)
            # The writer logged the failure once for the whole batch; mark it
            # retrieved so that every unawaited `durable` does not log it again.
            future.exception()

    # -- read side (worker threads) ----------------------------------------------------

    def _read_in_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._acquire_reader()
        reusable = True
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise StoreReadError(f"cannot read {self._path}: {exc}") from exc
        finally:
            if conn.in_transaction:
                # A connection left inside a read transaction would keep serving an
                # old snapshot of the database: never return one to the pool.
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    logger.warning("dropping read connection to %s: %s", self._path, exc)
                    reusable = False
            self._release_reader(conn, reusable)

    def _acquire_reader(self) -> sqlite3.Connection:
        with self._readers_lock:
            if self._state == "closed":
                raise StoreClosedError(f"SQLiteStore({self._path!r}) is closed")
            if self._idle_readers:
                return self._idle_readers.pop()
        try:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise StoreReadError(f"cannot open {self._path} for reading: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = ON")  # reads only: every write is the writer's
        except sqlite3.Error as exc:
            conn.close()
            raise StoreReadError(f"cannot open {self._path} for reading: {exc}") from exc
        return conn

    def _release_reader(self, conn: sqlite3.Connection, reusable: bool) -> None:
        with self._readers_lock:
            if reusable and self._state != "closed":
                self._idle_readers.append(conn)
                return
        conn.close()

    def _close_idle_readers(self) -> None:
        with self._readers_lock:
            idle, self._idle_readers = self._idle_readers, []
        for conn in idle:
            conn.close()

    # -- writer thread -----------------------------------------------------------------

    def _call_loop(self, fn: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError as exc:  # the event loop is closed: nobody is waiting any more
            logger.warning("store %s: cannot report to the event loop: %s", self._path, exc)

    def _writer_main(self, started: asyncio.Future[int]) -> None:
        try:
            db, last_id = self._open_writer()
        except BaseException as exc:
            self._call_loop(_settle_future, started, None, exc)
            return
        self._call_loop(_settle_future, started, last_id, None)
        stop: _Op | None = None
        try:
            while stop is None:
                batch = self._collect()
                try:
                    stop = self._run_batch(db, batch)
                except Exception as exc:  # a bug: fail the batch, keep the writer alive
                    logger.exception("store %s: writer failed on a batch", self._path)
                    for op in batch:
                        op.error = StoreWriteError(f"write to {self._path} failed: {exc!r}")
                    self._call_loop(self._settle, batch)
                    if batch[-1].kind is _Kind.STOP:
                        break
        finally:
            try:
                db.close()
            except sqlite3.Error as exc:
                logger.error("closing %s failed: %s", self._path, exc)
        if stop is not None:
            self._call_loop(self._settle, [stop])

    def _open_writer(self) -> tuple[Database, int]:
        # SQLite would report "unable to open database file"; say what is wrong.
        parent = os.path.dirname(os.path.abspath(self._path))
        if not os.path.isdir(parent):
            raise StoreError(f"cannot open {self._path}: directory {parent} does not exist")
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self._path}: {exc}") from exc
        try:
            # Plugins could register functions or hooks on our connection: not wanted.
            db = Database(conn, execute_plugins=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._enable_wal(db)
            # WAL + synchronous=NORMAL survives a process crash but may lose the last
            # commits on power loss or an OS crash: it only fsyncs at checkpoints. Our
            # promise is that an HTTP 2xx (an awaited write) means on disk, so the
            # WAL is fsynced at every commit; group commit pays for it.
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            found, now = migrate(db, self._path)
            if found != now:
                logger.info("migrated %s from schema version %d to %d", self._path, found, now)
            last_id = _max_update_id(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                raise StoreError(f"{self._path} is not a crdt-sync database: {exc}") from exc
            raise StoreError(f"cannot open {self._path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return db, last_id

    def _enable_wal(self, db: Database) -> None:
        # Switching a new file to WAL needs a moment alone with it. When another
        # connection is opening the file at the same time, SQLite answers SQLITE_BUSY
        # at once (the busy handler is not used for this lock) or the old mode. Retry.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                mode = f"busy: {exc}"
            if mode == "wal":
                return
            if time.monotonic() > deadline:
                raise StoreError(f"cannot switch {self._path} to WAL mode ({mode})")
            time.sleep(0.005)

    def _collect(self) -> list[_Op]:
        """Block for the first op, let the commit interval pass (when the last commit
        was not alone), take what came meanwhile.

        The writer sleeps through the interval instead of waiting on the queue: every
        op put on a waiting queue wakes this thread, and at thousands of appends per
        second those wake-ups contend with the event loop for the GIL.
        """
        first = self._queue.get()
        batch = [first]
        if first.kind in _BARRIERS:
            return batch
        # Wait for company only when writes come in company: after a commit of one op a
        # lone writer gets its commit at once (what arrives during its fsync still
        # forms the next batch), and a busy store keeps gathering for the interval.
        if self._interval > 0 and self._last_batch_size > 1:
            time.sleep(self._interval)
        while len(batch) < self._max_batch:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(op)
            if op.kind in _BARRIERS:  # somebody waits on it: commit now
                break
        return batch

    def _run_batch(self, db: Database, batch: list[_Op]) -> _Op | None:
        """Commit the writes of ``batch``, run its barrier, settle. Returns a STOP op."""
        barrier = batch[-1] if batch[-1].kind in _BARRIERS else None
        writes = batch[:-1] if barrier is not None else batch
        error = self._commit(db, writes) if writes else None
        if error is not None:
            for op in writes:
                op.error = error
                op.committed = None
        if barrier is not None and barrier.kind in (_Kind.FLUSH, _Kind.STOP):
            if error is not None:
                barrier.error = error
            elif self._unreported_failure is not None:
                barrier.error = StoreWriteError(
                    f"an append queued before this flush failed: {self._unreported_failure}"
                )
            self._unreported_failure = None
        elif error is not None and any(op.kind is _Kind.APPEND for op in writes):
            # Appends are the writes whose awaitable callers may ignore; every other
            # write raised to the caller awaiting it.
            self._unreported_failure = str(error)
        if barrier is not None and barrier.kind is _Kind.CALL:
            self._run_call(db, barrier)
        settle = writes if barrier is None or barrier.kind is _Kind.STOP else [*writes, barrier]
        if settle:
            self._call_loop(self._settle, settle)
        return barrier if barrier is not None and barrier.kind is _Kind.STOP else None

    def _run_call(self, db: Database, op: _Op) -> None:
        try:
            op.result = op.args[0](db.conn)
        except Exception as exc:  # handed to the caller of run_in_writer()
            op.error = exc
        if db.conn.in_transaction:
            _rollback(db.conn, self._path)
            if op.error is None:
                op.error = StoreError("run_in_writer(): the function left a transaction open")

    def _commit(self, db: Database, ops: list[_Op]) -> StoreWriteError | None:
        conn = db.conn
        began = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
            _apply(conn, ops)
            conn.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error, or a bug: either way nothing is durable
            _rollback(conn, self._path)
            self._failed_batches += 1
            self._write_failing = True
            logger.error(
                "store %s: write batch of %d ops failed and was rolled back: %s",
                self._path,
                len(ops),
                exc,
                exc_info=not isinstance(exc, sqlite3.Error),
            )
            self._resync_ids(conn)
            error = StoreWriteError(f"write to {self._path} failed: {exc}")
            error.__cause__ = exc
            return error
        self._commits += 1
        self._write_failing = False
        self._last_batch_size = len(ops)
        self._last_commit_seconds = time.monotonic() - began
        for listener in self._commit_listeners:
            try:
                listener(len(ops), self._last_commit_seconds)
            except Exception:
                logger.exception("store %s: commit listener failed", self._path)
        return None

    def _resync_ids(self, conn: sqlite3.Connection) -> None:
        # If another store wrote to this file, our next ids could collide: skip past.
        try:
            seen = _max_update_id(conn)
        except sqlite3.Error as exc:
            logger.warning("store %s: cannot read the update id sequence: %s", self._path, exc)
            return
        with self._id_lock:
            self._last_update_id = max(self._last_update_id, seen)


# -- SQL run by the writer, inside its transaction ---------------------------------------

_UPSERT_DOC = (
    "INSERT INTO documents (org, name, created_at, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (org, name) DO UPDATE SET updated_at = max(updated_at, excluded.updated_at)"
)


def _apply(conn: sqlite3.Connection, ops: list[_Op]) -> None:
    """Execute ``ops`` in order, setting each one's result."""
    sids = frame_sql.SidSequence(conn)
    i = 0
    while i < len(ops):
        op = ops[i]
        if op.kind is _Kind.APPEND:
            # Consecutive appends (the common case) go in with two executemany calls.
            j = i + 1
            while j < len(ops) and ops[j].kind is _Kind.APPEND:
                j += 1
            _apply_appends(conn, ops[i:j])
            for op in ops[i:j]:
                if op.batch is not None:
                    op.result = _apply_batch(conn, op, sids, update_id=op.args[0])
                else:
                    op.result = []
            i = j
            continue
        if op.kind is _Kind.COMPACT:
            org, name, data, upto, now = op.args
            conn.execute(
                "INSERT INTO documents (org, name, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (org, name) DO NOTHING",
                (org, name, now, now),
            )
            conn.execute(
                "INSERT INTO snapshots (org, name, data, upto_update_id, at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (org, name) DO UPDATE SET "
                "data = excluded.data, upto_update_id = excluded.upto_update_id, at = excluded.at",
                (org, name, data, upto, now),
            )
            conn.execute(
                "DELETE FROM updates WHERE org = ? AND name = ? AND id <= ?", (org, name, upto)
            )
        elif op.kind is _Kind.DELETE:
            op.result = _delete_doc(conn, *op.args)
        elif op.kind is _Kind.FRAMES:
            org, delete = op.args
            if delete is not None:
                _delete_doc(conn, org, delete)
            op.result = _apply_batch(conn, op, sids, update_id=None)
        elif op.kind is _Kind.FRAME:
            org, t, id_, kind, p, who, at, ctx = op.args
            sid = sids.take(org)
            conn.execute(
                "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (org, sid, *op.args[1:]),
            )
            op.result = sid
            op.committed = [Frame(sid, org, t, id_, kind, json.loads(p), who, at, json.loads(ctx))]
        elif op.kind is _Kind.MUTATION:
            conn.execute(
                "INSERT INTO mutations (org, client_tx_id, result, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (org, client_tx_id) DO NOTHING",
                op.args,
            )
        elif op.kind is _Kind.TRIM:
            org, keep = op.args
            cur = conn.execute(
                "DELETE FROM frames WHERE org = ? AND sid <= "
                "(SELECT sid FROM frames WHERE org = ? ORDER BY sid DESC LIMIT 1 OFFSET ?)",
                (org, org, keep),
            )
            op.result = cur.rowcount
        else:  # pragma: no cover - barriers never reach here
            raise AssertionError(f"unexpected op {op.kind} in a write batch")
        i += 1
    sids.save()


def _apply_appends(conn: sqlite3.Connection, ops: list[_Op]) -> None:
    docs: dict[tuple[str, str], list[int]] = {}
    for op in ops:
        _, org, name, _, _, at = op.args
        span = docs.get((org, name))
        if span is None:
            docs[(org, name)] = [at, at]
        else:
            span[1] = max(span[1], at)
    # The documents row first: the update rows reference it.
    conn.executemany(_UPSERT_DOC, [(o, n, first, last) for (o, n), (first, last) in docs.items()])
    conn.executemany(
        "INSERT INTO updates (id, org, name, data, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
        [op.args for op in ops],
    )


def _delete_doc(conn: sqlite3.Connection, org: str, name: str) -> bool:
    key = (org, name)
    conn.execute("DELETE FROM updates WHERE org = ? AND name = ?", key)
    conn.execute("DELETE FROM snapshots WHERE org = ? AND name = ?", key)
    cur = conn.execute("DELETE FROM documents WHERE org = ? AND name = ?", key)
    return cur.rowcount > 0


def _apply_batch(
    conn: sqlite3.Connection, op: _Op, sids: frame_sql.SidSequence, *, update_id: int | None
) -> list[int]:
    assert op.batch is not None
    op.committed = frame_sql.write(conn, op.batch, sids, update_id=update_id)
    return [frame.sid for frame in op.committed]


def _max_update_id(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT max("
        " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'updates'), 0),"
        " coalesce((SELECT max(id) FROM updates), 0),"
        " coalesce((SELECT max(upto_update_id) FROM snapshots), 0))"
    ).fetchone()
    return int(row[0])


def _rollback(conn: sqlite3.Connection, path: str) -> None:
    if not conn.in_transaction:  # SQLite may already have rolled back (e.g. SQLITE_FULL)
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.error("store %s: rollback failed: %s", path, exc)


# -- SQL run by readers ------------------------------------------------------------------


def _sid_ranges(frames: list[Frame]) -> str:
    """``"org=a 3..5, org=b 1..1"``: the sids of ``frames`` per org (for logs)."""
    spans: dict[str, list[int]] = {}
    for frame in frames:
        span = spans.setdefault(frame.org, [frame.sid, frame.sid])
        span[1] = frame.sid
    return ", ".join(f"org={org!r} {lo}..{hi}" for org, (lo, hi) in spans.items())


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
