"""The SQLite writer thread: one connection, a FIFO queue, group commit, a queue bound.

**One writer thread** owns one ``sqlite3`` connection (opened, migrated and closed in
that thread). Every write goes through a FIFO queue to it. It takes what is queued
(up to ``max_batch`` ops), waits up to ``commit_interval_ms`` for more, and runs the
whole batch in ONE ``BEGIN IMMEDIATE`` … ``COMMIT`` (group commit: one fsync for many
updates; the SQL is :mod:`persistence.sqlite.write_sql`). Then it settles every op of
the batch at once.

Handing results back: the writer settles ``asyncio.Future`` objects with ONE
``loop.call_soon_threadsafe`` per batch. crdt-sync runs anyio on its asyncio backend
only (DESIGN.md), so asyncio futures are fine here and cost no thread per op.

Admission: the bytes of the ops handed to the thread and not settled yet are bounded
(``max_queued_bytes``). Past it, ops wait in a backlog on the event loop, in call
order, and are handed over as settled ops make room (one op alone is always let
through).

Atomic groups (:meth:`Writer.group`): the ops queued inside the block are handed over
together when it exits, marked so that the thread commits them in one transaction
(past ``max_batch`` if need be) and admitted as a unit: a mutation request's writes
to several docs commit, and their frames get sids, together.

Failure model: a failing batch (disk full, read-only file, I/O error, …) is rolled
back, logged once, and every op in it raises :class:`StoreWriteError`; the writer
keeps running and tries later batches again. A FLUSH or STOP barrier also raises if an
append queued since the previous one failed, so a caller that never awaits the
``durable`` of its appends still learns about it at its next checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlite_utils import Database

from persistence import settling
from persistence.sqlite import write_sql
from persistence.sqlite.schema import migrate
from persistence.sqlite.write_sql import BARRIERS, Kind, Op
from persistence.store import Commit, CommitHistograms, StoreError, StoreWriteError

logger = logging.getLogger(__name__)

#: What an op costs in the writer queue besides its data (the op, its future, rows).
OP_OVERHEAD = 256


class Writer:
    """The writer thread of one database file and the queue that feeds it.

    Everything but the thread's own loop runs on the event loop that called
    :meth:`start`.

    Args:
        path: The database file.
        interval: Seconds the thread waits for more ops after the first of a batch.
        max_batch: Most ops in one transaction.
        max_queued_bytes: Bound on the bytes handed to the thread and not settled.
        busy_timeout_ms: How long the connection waits for SQLite's locks.
    """

    def __init__(
        self,
        path: str,
        *,
        interval: float,
        max_batch: int,
        max_queued_bytes: int,
        busy_timeout_ms: int,
        outbox: bool = False,
    ) -> None:
        self.path = path
        self.outbox = outbox  # every frame also gets a webhook outbox row
        self._interval = interval
        self._max_batch = max_batch
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[Op] = queue.SimpleQueue()
        # Event-loop side of the bound on the writer queue: bytes of the ops handed to
        # the writer and not settled yet, and the ops waiting (in call order) for room.
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0
        self._backlog: deque[tuple[Op, asyncio.Future[None] | None]] = deque()
        self._group: list[Op] | None = None  # ops of an open group(), not handed over
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Writer-thread state: message of a failed batch no flush has reported yet.
        self._unreported_failure: str | None = None
        self.histograms = CommitHistograms()  # counts the commits too
        self.failed_batches = 0
        self.last_batch_size = 0
        self.last_commit_seconds = 0.0
        self.write_failing = False  # the last write batch (or probe) failed

    @property
    def queued(self) -> int:
        """Ops waiting for the writer (approximate), those waiting for room included."""
        return self._queue.qsize() + len(self._backlog)

    # -- lifecycle (event loop) ----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
        """Start the thread; the future completes once the file is open and migrated,
        with the newest update id it holds (or raises why it could not be opened)."""
        self._loop = loop
        started: asyncio.Future[int] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main,
            args=(started,),
            name=f"sqlite-writer {os.path.basename(self.path)}",
            # Not joined at interpreter exit: a store nobody closed must not hang the
            # process. close() is what makes queued writes durable.
            daemon=True,
        )
        self._thread.start()
        return started

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        """Wait for the thread to exit (blocking: call it from a worker thread)."""
        if self._thread is not None:
            self._thread.join()

    def put_stop(self) -> None:
        """Stop the thread without waiting for an answer (a store closed while starting)."""
        self._queue.put(Op(Kind.STOP, (), None))

    # -- admission (event loop) ----------------------------------------------------------

    def submit(self, kind: Kind, args: tuple[Any, ...], size: int = 0) -> asyncio.Future[Any]:
        """Queue an op behind every admitted one (never waits); its future."""
        assert self._loop is not None
        future: Commit[Any] = Commit(loop=self._loop)
        self.admit(Op(kind, args, future), size, wait=False)
        return future

    def admit(self, op: Op, size: int = 0, *, wait: bool = True) -> asyncio.Future[None] | None:
        """Hand ``op`` to the writer, or put it in line behind the ops waiting for room.

        Returns:
            ``None`` if handed over now; else (``wait``) a future completed when it is.
        """
        op.size = size + OP_OVERHEAD
        if self._group is not None:
            assert op.kind not in BARRIERS, "a barrier inside an atomic group"
            self._group.append(op)
            return None
        if not self._backlog and (
            self.queued_bytes == 0 or self.queued_bytes + op.size <= self.max_queued_bytes
        ):
            self.queued_bytes += op.size
            self._queue.put(op)
            return None
        assert self._loop is not None
        admitted = self._loop.create_future() if wait else None
        self._backlog.append((op, admitted))
        return admitted

    @contextmanager
    def group(self) -> Iterator[None]:
        """Commit the ops admitted inside the block in one transaction.

        The block must not yield to the event loop: its ops are held back until it
        exits (an op awaited inside it would never commit). Nested blocks join the
        outermost one.
        """
        if self._group is not None:
            yield
            return
        ops = self._group = []
        try:
            yield
        finally:
            self._group = None
            self._admit_group(ops)

    def _admit_group(self, ops: list[Op]) -> None:
        """Hand ``ops`` over as one unit (all now, or all behind the waiting ops)."""
        if not ops:
            return
        for op in ops[:-1]:
            op.more = True
        total = sum(op.size for op in ops)
        if not self._backlog and (
            self.queued_bytes == 0 or self.queued_bytes + total <= self.max_queued_bytes
        ):
            self.queued_bytes += total
            for op in ops:
                self._queue.put(op)
            return
        self._backlog.extend((op, None) for op in ops)

    def _release(self, ops: Sequence[Op]) -> None:
        """``ops`` left the writer: hand over the waiting ops that fit now, in order."""
        for op in ops:
            self.queued_bytes -= op.size
            op.size = 0
        backlog = self._backlog
        while backlog:
            op, admitted = backlog[0]
            if self.queued_bytes and self.queued_bytes + op.size > self.max_queued_bytes:
                break
            backlog.popleft()
            self.queued_bytes += op.size
            self._queue.put(op)
            if admitted is not None and not admitted.done():
                admitted.set_result(None)
            while op.more:  # the rest of its atomic group goes with it
                op, _ = backlog.popleft()
                self.queued_bytes += op.size
                self._queue.put(op)

    def _settle(self, ops: Sequence[Op]) -> None:
        """Runs on the event loop: release the queue bytes of ``ops`` and complete their
        futures (:func:`persistence.settling.settle`)."""
        self._release(ops)
        settling.settle(ops)

    # -- the thread ----------------------------------------------------------------------

    def _call_loop(self, fn: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError as exc:  # the event loop is closed: nobody is waiting any more
            logger.warning("store %s: cannot report to the event loop: %s", self.path, exc)

    def _main(self, started: asyncio.Future[int]) -> None:
        try:
            db, last_id = self._open()
        except BaseException as exc:
            self._call_loop(_settle_future, started, None, exc)
            return
        self._call_loop(_settle_future, started, last_id, None)
        stop: Op | None = None
        try:
            while stop is None:
                batch = self._collect()
                try:
                    stop = self._run_batch(db, batch)
                except Exception as exc:  # a bug: fail the batch, keep the writer alive
                    logger.exception("store %s: writer failed on a batch", self.path)
                    for op in batch:
                        op.error = StoreWriteError(f"write to {self.path} failed: {exc!r}")
                    self._call_loop(self._settle, batch)
                    if batch[-1].kind is Kind.STOP:
                        break
        finally:
            try:
                db.close()
            except sqlite3.Error as exc:
                logger.error("closing %s failed: %s", self.path, exc)
        if stop is not None:
            self._call_loop(self._settle, [stop])

    def _open(self) -> tuple[Database, int]:
        # SQLite would report "unable to open database file"; say what is wrong.
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise StoreError(f"cannot open {self.path}: directory {parent} does not exist")
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            # Plugins could register functions or hooks on our connection: not wanted.
            db = Database(conn, execute_plugins=False)
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            self._enable_wal(db)
            # WAL + synchronous=NORMAL survives a process crash but may lose the last
            # commits on power loss or an OS crash: it only fsyncs at checkpoints. Our
            # promise is that an HTTP 2xx (an awaited write) means on disk, so the
            # WAL is fsynced at every commit; group commit pays for it.
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            found, now = migrate(db, self.path)
            if found != now:
                logger.info("migrated %s from schema version %d to %d", self.path, found, now)
            last_id = write_sql.max_update_id(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                raise StoreError(f"{self.path} is not a crdt-sync database: {exc}") from exc
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return db, last_id

    def _enable_wal(self, db: Database) -> None:
        # Switching a new file to WAL needs a moment alone with it. When another
        # connection is opening the file at the same time, SQLite answers SQLITE_BUSY
        # at once (the busy handler is not used for this lock) or the old mode. Retry.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
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
                raise StoreError(f"cannot switch {self.path} to WAL mode ({mode})")
            time.sleep(0.005)

    def _collect(self) -> list[Op]:
        """Block for the first op, let the commit interval pass (when the last commit
        was not alone), take what came meanwhile.

        The writer sleeps through the interval instead of waiting on the queue: every
        op put on a waiting queue wakes this thread, and at thousands of appends per
        second those wake-ups contend with the event loop for the GIL.
        """
        first = self._queue.get()
        batch = [first]
        if first.kind in BARRIERS:
            return batch
        # Wait for company only when writes come in company: after a commit of one op a
        # lone writer gets its commit at once (what arrives during its fsync still
        # forms the next batch), and a busy store keeps gathering for the interval.
        if self._interval > 0 and self.last_batch_size > 1:
            time.sleep(self._interval)
        while True:
            if batch[-1].more:
                # The rest of an atomic group: being handed over right now (the event
                # loop puts a group's ops one after the other without yielding).
                batch.append(self._queue.get())
                continue
            if len(batch) >= self._max_batch:
                break
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(op)
            if op.kind in BARRIERS:  # somebody waits on it: commit now
                break
        return batch

    def _run_batch(self, db: Database, batch: list[Op]) -> Op | None:
        """Commit the writes of ``batch``, run its barrier, settle. Returns a STOP op."""
        barrier = batch[-1] if batch[-1].kind in BARRIERS else None
        writes = batch[:-1] if barrier is not None else batch
        error = self._commit(db, writes) if writes else None
        if error is not None:
            for op in writes:
                op.error = error
        if barrier is not None and barrier.kind in (Kind.FLUSH, Kind.STOP):
            if error is not None:
                barrier.error = error
            elif self._unreported_failure is not None:
                barrier.error = StoreWriteError(
                    f"an append queued before this flush failed: {self._unreported_failure}"
                )
            self._unreported_failure = None
        elif error is not None and any(op.kind is Kind.APPEND for op in writes):
            # Appends are the writes whose awaitable callers may ignore; every other
            # write raised to the caller awaiting it.
            self._unreported_failure = str(error)
        if barrier is not None and barrier.kind is Kind.CALL:
            self._run_call(db, barrier)
        settle = writes if barrier is None or barrier.kind is Kind.STOP else [*writes, barrier]
        if settle:
            self._call_loop(self._settle, settle)
        return barrier if barrier is not None and barrier.kind is Kind.STOP else None

    def _run_call(self, db: Database, op: Op) -> None:
        try:
            op.result = op.args[0](db.conn)
        except Exception as exc:  # handed to the caller of run_in_writer()
            op.error = exc
        if db.conn.in_transaction:
            rollback(db.conn, self.path)
            if op.error is None:
                op.error = StoreError("run_in_writer(): the function left a transaction open")

    def _commit(self, db: Database, ops: list[Op]) -> StoreWriteError | None:
        conn = db.conn
        began = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
            write_sql.apply(conn, ops, outbox=self.outbox)
            conn.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error, or a bug: either way nothing is durable
            rollback(conn, self.path)
            self.failed_batches += 1
            self.write_failing = True
            logger.error(
                "store %s: write batch of %d ops failed and was rolled back: %s",
                self.path,
                len(ops),
                exc,
                exc_info=not isinstance(exc, sqlite3.Error),
            )
            error = StoreWriteError(f"write to {self.path} failed: {exc}")
            error.__cause__ = exc
            return error
        seconds = time.monotonic() - began
        self.write_failing = False
        self.last_batch_size = len(ops)
        self.last_commit_seconds = seconds
        self.histograms.observe(len(ops), seconds)
        return None


def rollback(conn: sqlite3.Connection, path: str) -> None:
    """Roll back the open transaction of ``conn``, if SQLite has not already."""
    if not conn.in_transaction:  # SQLite may already have rolled back (e.g. SQLITE_FULL)
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.error("store %s: rollback failed: %s", path, exc)


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
