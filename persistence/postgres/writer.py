"""The PostgreSQL store's writer: one asyncio task, a FIFO queue, group commit.

Every write of a :class:`~persistence.postgres.PostgresStore` is an :class:`Op` put on
the queue synchronously (so a node's writes commit in call order). The task takes
what is queued (up to ``max_batch`` ops, after ``commit_interval`` when writes come in
company), runs the batch in ONE transaction on a pooled connection
(:func:`persistence.postgres.write_sql.apply`), then settles every op's
:class:`~persistence.store.Commit` at once.

Atomic groups (:meth:`Writer.group`): the ops queued inside the block are put on the
queue together when it exits, marked so that the task commits them in one transaction
(past ``max_batch`` if need be).

Failures: a batch that fails is rolled back and each of its ops raises a
:class:`~persistence.store.StoreWriteError`, a :class:`StoreUnavailableError` when the
server or the connection is gone (refused, reset, terminated, no connection within
``acquire_timeout``). The failure is logged once per outage (the recovery too); the
task keeps going with later batches and the pool reconnects in the background. A
batch that loses a deadlock or a serialisation check (cannot happen between our own
writers, which lock in one order, but another client of the database might) is
retried a few times before it fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool

from persistence import settling
from persistence.postgres import errors, write_sql
from persistence.postgres.write_sql import BARRIERS, Kind, Op
from persistence.store import StoreStats, StoreWriteError

__all__ = ["OP_OVERHEAD", "Writer"]

logger = logging.getLogger(__name__)

#: What an op costs in the queue besides its data (the op, its future, rows).
OP_OVERHEAD = 256
#: Attempts of a batch that loses a deadlock or serialisation check.
ROLLBACK_RETRIES = 3
#: Docs whose newest own append the writer remembers (a doc it forgot falls back to
#: the doc's newest update, as if another node's appends were held).
MAX_OWN_HEADS = 65_536


class Writer:
    """The queue and the task committing it (see the module docstring).

    Args:
        pool: The store's pool (open).
        where: How to name the database in logs and errors (no credentials).
        commit_interval: Seconds to wait for company after the first op of a batch.
        max_batch: Most ops in one transaction.
        max_queued_bytes: Bytes queued past which :meth:`wait_for_room` waits.
        acquire_timeout: Seconds to wait for a pooled connection before a batch fails
            as unavailable.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        where: str,
        *,
        commit_interval: float,
        max_batch: int,
        max_queued_bytes: int,
        acquire_timeout: float,
        outbox: bool = False,
    ) -> None:
        self._pool = pool
        self._outbox = outbox  # every frame also gets a webhook outbox row
        self._where = where
        self._interval = commit_interval
        self._max_batch = max_batch
        self._max_queued_bytes = max_queued_bytes
        self._acquire_timeout = acquire_timeout
        self._queue: deque[Op] = deque()
        self._group: list[Op] | None = None  # ops of an open group(), not queued yet
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._queued_bytes = 0
        self._task: asyncio.Task[None] | None = None
        # The failure of an append no flush has reported yet (its class kept: an
        # outage stays a StoreUnavailableError).
        self._unreported_failure: StoreWriteError | None = None
        self.failing: str | None = None  # why the last batch failed; None once one commits
        self._failures_in_outage = 0
        self._commits = 0
        self._failed_batches = 0
        self._last_batch_size = 0
        self._last_commit_seconds = 0.0
        self.refused_batches = 0  # counted by the store (values refused before queueing)
        self.rolled_back = 0  # attempts lost to a deadlock or serialisation failure
        #: (org, name) -> the newest update of the doc this node appended (bounded,
        #: least recently written dropped first): see write_sql._doc_heads.
        self._own_heads: OrderedDict[tuple[str, str], int] = OrderedDict()

    # -- event-loop side ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"postgres-writer {self._where}"
        )

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, op: Op, size: int = 0) -> None:
        """Put ``op`` at the end of the queue (no await: call order is commit order)."""
        if self._task is not None and self._task.done() and op.future is not None:
            # Nobody would ever settle it (cannot happen short of a bug: see _run).
            op.future.set_exception(StoreWriteError(f"store {self._where}: the writer stopped"))
            op.future.exception()
            return
        op.size = size + OP_OVERHEAD
        if self._group is not None:
            assert op.kind not in BARRIERS, "a barrier inside an atomic group"
            self._group.append(op)
            return
        self._queued_bytes += op.size
        self._queue.append(op)
        self._wake.set()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Commit the ops submitted inside the block in one transaction.

        The block must not yield to the event loop (its ops are held back until it
        exits); nested blocks join the outermost one.
        """
        if self._group is not None:
            yield
            return
        ops = self._group = []
        try:
            yield
        finally:
            self._group = None
            for op in ops[:-1]:
                op.more = True
            for op in ops:
                self._queued_bytes += op.size
                self._queue.append(op)
            if ops:
                self._wake.set()

    async def wait_for_room(self, op: Op) -> None:
        """Wait (after queueing ``op``) while more than ``max_queued_bytes`` are queued,
        so that a producer faster than the database is slowed down; an op whose own
        size is over the bound alone is not held back, nor one of an open group."""
        if self._group is not None:
            return
        while (
            op.size and self._queued_bytes > self._max_queued_bytes and self._queued_bytes > op.size
        ):
            self._room.clear()
            await self._room.wait()

    async def stopped(self) -> None:
        """Wait for the task to end (after a STOP op)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def stats(self) -> StoreStats:
        return StoreStats(
            commits=self._commits,
            failed_batches=self._failed_batches,
            last_commit_seconds=self._last_commit_seconds,
            last_batch_size=self._last_batch_size,
            queued=len(self._queue),
            queued_bytes=self._queued_bytes,
            refused_batches=self.refused_batches,
        )

    # -- the task ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                stop = await self._run_batch(batch)
            except Exception as exc:  # a bug: fail the batch, keep the writer alive
                logger.exception("store %s: writer failed on a batch", self._where)
                for op in batch:
                    op.error = StoreWriteError(f"write to {self._where} failed: {exc!r}")
                self._settle(batch)
                stop = batch[-1].kind is Kind.STOP
            if stop:
                return

    async def _collect(self) -> list[Op]:
        queue = self._queue
        while not queue:
            self._wake.clear()
            await self._wake.wait()
        if queue[0].kind not in BARRIERS and self._interval > 0 and self._last_batch_size > 1:
            # Wait for company only when writes come in company: a lone writer gets
            # its commit at once; a busy store gathers for the interval.
            await asyncio.sleep(self._interval)
        batch = [queue.popleft()]
        if batch[0].kind in BARRIERS:
            return batch
        while queue and (len(batch) < self._max_batch or batch[-1].more):
            op = queue.popleft()
            batch.append(op)
            if op.kind in BARRIERS:  # somebody waits on it: commit now
                break
        return batch

    async def _run_batch(self, batch: list[Op]) -> bool:
        """Commit the writes of ``batch``, settle them and its barrier; ``True`` on STOP."""
        barrier = batch[-1] if batch[-1].kind in BARRIERS else None
        writes = batch[:-1] if barrier is not None else batch
        error = await self._commit(writes) if writes else None
        if error is not None:
            for op in writes:
                op.error = error
                op.result = None
        if barrier is not None:
            if error is not None:
                barrier.error = error
            elif (failure := self._unreported_failure) is not None:
                barrier.error = type(failure)(
                    f"an append queued before this flush failed: {failure}"
                )
                barrier.error.__cause__ = failure.__cause__
            self._unreported_failure = None
        elif error is not None and any(op.kind is Kind.APPEND for op in writes):
            # Appends are the writes whose outcome callers may ignore; every other
            # write raised to the caller awaiting it.
            self._unreported_failure = error
        self._settle(batch)
        return barrier is not None and barrier.kind is Kind.STOP

    async def _commit(self, ops: list[Op]) -> StoreWriteError | None:
        began = time.monotonic()
        own: dict[tuple[str, str], int | None] = {}
        for attempt in range(1, ROLLBACK_RETRIES + 1):
            try:
                async with self._pool.connection(timeout=self._acquire_timeout) as conn:
                    async with conn.transaction(), conn.pipeline():
                        own = await write_sql.apply(
                            conn, ops, self._own_heads, outbox=self._outbox
                        )
            except Exception as exc:  # psycopg.Error, or a bug: nothing is committed
                if not errors.is_rolled_back(exc):
                    return self._failed(ops, exc)
                self.rolled_back += 1
                if attempt == ROLLBACK_RETRIES:
                    return self._failed(ops, exc)
                logger.warning(
                    "store %s: batch of %d ops rolled back (%s), retrying",
                    self._where,
                    len(ops),
                    exc,
                )
                continue
            break
        self._remember_own(own)
        self._commits += 1
        self._last_batch_size = len(ops)
        self._last_commit_seconds = time.monotonic() - began
        if self.failing is not None:
            logger.warning(
                "store %s: writes go through again (%d batches failed meanwhile)",
                self._where,
                self._failures_in_outage,
            )
            self.failing = None
            self._failures_in_outage = 0
        return None

    def _remember_own(self, own: dict[tuple[str, str], int | None]) -> None:
        heads = self._own_heads
        for key, update_id in own.items():
            heads.pop(key, None)
            if update_id is not None:
                heads[key] = update_id
        while len(heads) > MAX_OWN_HEADS:
            heads.popitem(last=False)

    def _failed(self, ops: list[Op], exc: BaseException) -> StoreWriteError:
        self._failed_batches += 1
        self._failures_in_outage += 1
        error = errors.write_error(self._where, exc)
        if self.failing is None:  # once per outage
            logger.error(
                "store %s: write batch of %d ops failed and was rolled back: %s",
                self._where,
                len(ops),
                error,
                exc_info=not isinstance(exc, psycopg.Error),
            )
        else:
            logger.debug("store %s: write batch failed again: %s", self._where, error)
        self.failing = str(error)
        return error

    def _settle(self, ops: Sequence[Op]) -> None:
        """Release the queue bytes of ``ops`` and complete their futures
        (:func:`persistence.settling.settle`)."""
        for op in ops:
            self._queued_bytes -= op.size
            op.size = 0
        self._room.set()
        settling.settle(ops)
