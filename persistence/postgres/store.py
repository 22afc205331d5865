"""PostgreSQL implementation of :class:`persistence.store.Store`, for several nodes.

Every crdt-sync node has one :class:`PostgresStore` on the shared database. What makes
several of them safe lives in the database, not in the nodes:

* update ids come from a sequence drawn under the doc's row lock, so they grow per
  doc in commit order, and each commit names the doc's previous update;
* each org's sids come from its ``frame_seq`` row, advanced under its row lock by the
  transaction that logs the frames: gap-free, in commit order, whichever node wrote;
* a frame draft whose record already covers its update id is left out (another node
  framed that state first), and an idempotency key another node stored first makes
  the batch carrying it a replay (:class:`~persistence.store.MutationReplayed`);
* compaction holds the doc's row lock and merges every log row it drops.

See :mod:`persistence.postgres.write_sql` for the transaction and
:mod:`persistence.postgres.writer` for group commit and the failure model. Reads use
the same pool; a read that cannot reach the server raises
:class:`~persistence.postgres.errors.ReadUnavailableError` (a
:class:`~persistence.store.StoreReadError` and a
:class:`~persistence.store.StoreUnavailableError`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from persistence import outbox, paging, prepared, values, versions
from persistence.lifecycle import StartClose, check_open
from persistence.outbox import Delivery, EndpointSpec, OutboxStatus
from persistence.postgres import errors, reads, versions_sql, write_sql
from persistence.postgres.schema import migrate
from persistence.postgres.write_sql import Kind, Op, check_opt_text, check_text
from persistence.postgres.writer import Writer
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
    StoreUnavailableError,
    VersionInfo,
)

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: TCP settings for every connection unless the DSN sets them: a server that vanishes
#: without a reset (a cut network) is noticed in seconds, not at the kernel's timeout.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


#: A node that dies (or loses the network) inside a transaction holds its row locks,
#: and so every other node's writes to those docs and orgs, until the server drops its
#: session: our transactions never sit idle this long, so the server may end one that does.
IDLE_IN_TRANSACTION_TIMEOUT = "30s"


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
        [IDLE_IN_TRANSACTION_TIMEOUT],
    )


class PostgresStore(StartClose):
    """The crdt-sync store on a PostgreSQL database shared by several nodes.

    Use ``async with PostgresStore(dsn) as store:`` or :meth:`start` and :meth:`close`.
    All methods must be called from the event loop that ran :meth:`start` (anyio on
    its asyncio backend).

    Args:
        dsn: ``postgresql://user@host:port/dbname`` (or a libpq key=value string).
        min_size: Connections the pool keeps open.
        max_size: Most connections of the pool (the writer uses one at a time).
        commit_interval_ms: How long the writer waits for more ops after the first of
            a batch, when writes come in company (0 = commit what is queued at once).
        max_batch: Most ops in one transaction.
        max_queued_write_bytes: Bytes queued for the writer past which :meth:`append`
            waits (after queueing) for the writer to catch up.
        acquire_timeout: Seconds a write batch or a read waits for a connection
            before failing with :class:`StoreUnavailableError`.
        connect_timeout: Seconds :meth:`start` waits for the server.
        outbox: Give every frame logged a webhook outbox row in its transaction
            (:mod:`persistence.outbox`; on when webhooks are configured).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        commit_interval_ms: float = 2.0,
        max_batch: int = 256,
        max_queued_write_bytes: int = 64 * 1024 * 1024,
        acquire_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        outbox: bool = False,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_size <= max_size >= 1, got {min_size}, {max_size}")
        if commit_interval_ms < 0:
            raise ValueError(f"commit_interval_ms must be >= 0, got {commit_interval_ms}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queued_write_bytes < 1:
            raise ValueError(f"max_queued_write_bytes must be >= 1, got {max_queued_write_bytes}")
        if acquire_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("acquire_timeout and connect_timeout must be > 0")
        self._dsn = dsn
        self._where = errors.describe(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._commit_interval = commit_interval_ms / 1000.0
        self._max_batch = max_batch
        self._max_queued_bytes = max_queued_write_bytes
        self._acquire_timeout = acquire_timeout
        self._connect_timeout = connect_timeout
        self._outbox = outbox
        self._state = "new"  # -> "starting" -> "open" -> "closed"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: AsyncConnectionPool | None = None
        self._writer: Writer | None = None

    @property
    def where(self) -> str:
        """The database, as named in logs (``postgresql://host:port/dbname``)."""
        return self._where

    # -- lifecycle ---------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        try:
            given = conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"invalid database URL: {exc}") from None
        kwargs: dict[str, Any] = {k: v for k, v in _KEEPALIVE.items() if k not in given}
        if "connect_timeout" not in given:
            kwargs["connect_timeout"] = max(1, round(self._connect_timeout))
        return kwargs

    async def start(self) -> None:
        """Connect, migrate the schema (safe when several nodes start at once), open
        the pool and start the writer.

        Raises:
            StoreUnavailableError: the server cannot be reached (or refuses us).
            StoreError: the database is not a crdt-sync database, or its schema is
                newer than this code.
        """
        if self._state != "new":
            raise StoreError(f"PostgresStore({self._where}) can only be started once")
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise StoreError("PostgresStore needs anyio's asyncio backend") from None
        kwargs = self._connect_kwargs()
        self._state = "starting"
        try:
            # One plain connection first: it fails fast and says why (a pool would
            # retry in the background until its timeout).
            with anyio.fail_after(self._connect_timeout + 1):
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, **kwargs)
            try:
                found, now = await migrate(conn, self._where)
            finally:
                await conn.close()
        except TimeoutError as exc:
            self._state = "closed"
            raise StoreUnavailableError(
                f"cannot open PostgreSQL {self._where}: no answer in {self._connect_timeout}s"
            ) from exc
        except psycopg.Error as exc:
            self._state = "closed"
            if errors.is_unavailable(exc):
                raise StoreUnavailableError(
                    f"cannot open PostgreSQL {self._where}: {errors.reason(exc)}"
                ) from exc
            raise StoreError(
                f"cannot migrate PostgreSQL {self._where}: {errors.reason(exc)}"
            ) from exc
        except BaseException:
            self._state = "closed"
            raise
        if found != now:
            logger.info("migrated %s from schema version %d to %d", self._where, found, now)
        pool: AsyncConnectionPool = AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            kwargs={"autocommit": True, **kwargs},
            timeout=self._acquire_timeout,
            # An idle connection the server dropped is replaced before use, not
            # handed to a batch to fail on.
            check=AsyncConnectionPool.check_connection,
            # psycopg_pool retries a lost connection with doubling delays for up to
            # 300 s: after a minute's outage its next try could be a minute away, and
            # the node would stay unready although PostgreSQL is back. A short chain
            # gives up instead, and the next request starts a fresh, immediate one.
            reconnect_timeout=max(2 * self._acquire_timeout, 10.0),
            configure=_configure,
            name=f"crdt-sync {self._where}",
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except BaseException as exc:
            self._state = "closed"
            await pool.close()
            if isinstance(exc, PoolTimeout):
                raise StoreUnavailableError(f"cannot open PostgreSQL {self._where}: {exc}") from exc
            raise
        if self._state == "closed":  # close() was called while we were starting
            await pool.close()
            raise StoreClosedError(f"PostgresStore({self._where}) was closed while starting")
        self._pool = pool
        self._writer = Writer(
            pool,
            self._where,
            commit_interval=self._commit_interval,
            max_batch=self._max_batch,
            max_queued_bytes=self._max_queued_bytes,
            acquire_timeout=self._acquire_timeout,
            outbox=self._outbox,
        )
        self._writer.start()
        self._state = "open"
        logger.info("opened store %s", self._where)

    async def close(self) -> None:
        """Commit everything queued, stop the writer and close the pool. Idempotent.

        Raises:
            StoreWriteError: the final commit failed, or an append queued since the
                last :meth:`flush` failed (the store is closed all the same).
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        assert self._writer is not None and self._pool is not None and self._loop is not None
        done: Commit[None] = Commit(loop=self._loop)
        self._writer.submit(Op(Kind.STOP, (), done))
        error: BaseException | None = None
        with anyio.CancelScope(shield=True):
            if self._writer.alive:
                try:
                    await done
                except StoreError as exc:
                    error = exc
                await self._writer.stopped()
            else:  # cannot happen short of a bug; do not wait for an answer forever
                logger.error("store %s: the writer task is gone", self._where)
            await self._pool.close()
        logger.info("closed store %s", self._where)
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
        """Queue ``update`` (with ``frames``, same transaction) for the next group commit.

        The op is queued before anything yields, so appends made one after the other
        commit in that order. Then, if the writer is more than ``max_queued_write_bytes``
        behind, this waits for it (the op keeps its place).

        Returns:
            An :class:`~persistence.store.Appended` whose ``durable`` gives the
            :class:`~persistence.store.Committed` (or raises
            :class:`~persistence.store.StoreWriteError`).

        Raises:
            persistence.values.UnstorableValue: a value is not storable; nothing queued.
        """
        writer = self._check_open()
        check_text(org, "org")
        check_text(name, "name")
        data = values.as_bytes(update, "update")
        check_opt_text(actor, "actor")
        values.check_int(at, "at")
        batch = self._prepare(org, name, frames) if frames is not None else None
        assert self._loop is not None
        future: Commit[Committed] = Commit(loop=self._loop)
        op = Op(Kind.APPEND, (org, name, data, actor, at), future, batch=batch)
        writer.submit(op, len(data) + prepared.batch_size(batch))
        await writer.wait_for_room(op)
        return Appended(durable=future)

    def atomic(self) -> AbstractContextManager[None]:
        """See :meth:`persistence.store.Store.atomic` (:meth:`Writer.group`)."""
        return self._check_open().group()

    def log_frames(
        self, org: str, batch: FrameBatch, *, delete: str | None = None
    ) -> Commit[list[Frame]]:
        """Queue frames (an idempotency key, the deletion of doc ``delete``) synchronously.

        Returns:
            A commit of the frames logged, with their sids (stale drafts left out). It
            raises :class:`~persistence.store.MutationReplayed` when the batch's key
            was stored first (then nothing of the batch was written), or
            :class:`~persistence.store.StoreWriteError`.

        Raises:
            persistence.values.UnstorableValue: a value is not storable; nothing queued.
        """
        writer = self._check_open()
        check_text(org, "org")
        if delete is not None:
            check_text(delete, "name")
        checked = self._prepare(org, delete, batch)
        assert self._loop is not None
        future: Commit[list[Frame]] = Commit(loop=self._loop)
        writer.submit(
            Op(Kind.FRAMES, (org, delete), future, batch=checked), prepared.batch_size(checked)
        )
        return future

    def _prepare(self, org: str, name: str | None, batch: FrameBatch) -> prepared.PreparedBatch:
        """Check and serialise ``batch``; a refusal is logged and counted once here."""
        try:
            return write_sql.prepare(org, batch)
        except values.UnstorableValue as exc:
            assert self._writer is not None
            self._writer.refused_batches += 1
            logger.error(
                "store %s: frames refused (org=%r doc=%r): %s", self._where, org, name, exc
            )
            raise

    async def _submit(self, kind: Kind, args: tuple[Any, ...], size: int = 0) -> Any:
        writer = self._check_open()
        assert self._loop is not None
        future: Commit[Any] = Commit(loop=self._loop)
        writer.submit(Op(kind, args, future), size)
        return await future

    async def flush(self) -> None:
        """Wait until every write queued before this call is committed.

        Raises:
            StoreWriteError: a write queued before this call failed, or an append
                queued since the previous flush failed.
        """
        await self._submit(Kind.FLUSH, ())

    async def compact(self, org: str, name: str, state: bytes) -> None:
        """Fold ``state``, the snapshot and every logged update of the doc into a new
        snapshot and drop those log rows, in one transaction behind earlier writes.

        Safe when several nodes compact one doc at once with different states: each
        holds the doc's row lock in turn and merges what the other left.

        Raises:
            StoreWriteError: the transaction failed, or ``state`` (or a stored row) is
                not a Yjs update (nothing changed).
        """
        check_text(org, "org")
        check_text(name, "name")
        data = values.as_bytes(state, "state")
        await self._submit(Kind.COMPACT, (org, name, data, values.now_ms()), len(data))

    async def delete(self, org: str, name: str) -> bool:
        """Delete a doc with its snapshot and log; ``True`` if it was stored."""
        check_text(org, "org")
        check_text(name, "name")
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
        """Log a frame (no record projection); return its sid once committed."""
        for value, what in ((org, "org"), (t, "t"), (id, "id"), (op, "op")):
            check_text(value, what)
        check_opt_text(who, "who")
        values.check_int(at, "at")
        p_text, ctx_text = values.dumps(p, "p"), values.dumps(ctx, "ctx")
        args = (org, t, id, op, p_text, who, at, ctx_text)
        return int(await self._submit(Kind.FRAME, args, len(p_text) + len(ctx_text)))

    async def trim_frames(self, org: str, keep: int) -> int:
        """Delete all but the newest ``keep`` frames of ``org``; return how many went."""
        check_text(org, "org")
        values.check_at_least(keep, "keep", 0)
        return int(await self._submit(Kind.TRIM, (org, keep)))

    async def put_mutation(self, org: str, client_tx_id: str, result: dict[str, Any]) -> None:
        """Remember a mutation's result under its key (the first result stored wins)."""
        check_text(org, "org")
        check_text(client_tx_id, "client_tx_id")
        text = values.dumps(result, "result")
        await self._submit(Kind.MUTATION, (org, client_tx_id, text, values.now_ms()), len(text))

    def stats(self) -> StoreStats:
        """Counters of the writer (no I/O)."""
        return self._writer.stats() if self._writer is not None else StoreStats()

    @property
    def rolled_back(self) -> int:
        """Write transactions PostgreSQL rolled back for a deadlock or a serialisation
        failure (each retried). Our writers lock in one global order, so this stays 0
        unless another client of the database takes the same locks."""
        return self._writer.rolled_back if self._writer is not None else 0

    def health(self) -> str | None:
        """``None`` while writes go through; else why not (no I/O)."""
        if self._state != "open":
            return f"store {self._state}"
        assert self._writer is not None
        if not self._writer.alive:
            return "store writer task stopped"
        return self._writer.failing

    async def probe(self) -> None:
        """Commit one small write (behind every queued write); clears :meth:`health`.

        Raises:
            StoreWriteError: it could not be committed (``StoreUnavailableError``: the
                server cannot be reached).
        """
        await self._submit(Kind.PROBE, ())

    # -- reads -------------------------------------------------------------------------

    async def load(self, org: str, name: str) -> StoredDoc | None:
        """The doc's snapshot and the updates logged after it, or ``None``."""
        check_text(org, "org")
        check_text(name, "name")
        return await self._read(reads.load_doc, org, name)

    async def has_doc(self, org: str, name: str) -> bool:
        """Whether the doc is stored (one key lookup)."""
        check_text(org, "org")
        check_text(name, "name")
        return await self._read(reads.has_doc, org, name)

    async def updates_since(self, org: str, name: str, since: int) -> DocTail:
        """What a replica holding the doc up to update ``since`` lacks (one snapshot)."""
        check_text(org, "org")
        check_text(name, "name")
        values.check_int(since, "since")
        return await self._read(reads.updates_since, org, name, since)

    async def list_docs(
        self, org: str, *, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> tuple[list[DocInfo], str | None]:
        """Docs of ``org`` whose name starts with ``prefix``, by name; (page, next cursor).

        Raises:
            ValueError: ``cursor`` is not one this store returned, or ``limit`` < 1.
        """
        check_text(org, "org")
        check_text(prefix, "prefix")
        values.check_at_least(limit, "limit", 1)
        after = reads.decode_cursor(cursor) if cursor is not None else None
        rows = await self._read(
            reads.list_docs, org, prefix, paging.prefix_end(prefix), after, limit + 1
        )
        return paging.split_page(rows, limit)

    async def frames_since(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> list[Frame]:
        """Frames of ``org`` with ``sid > since`` (of type ``t``), oldest first."""
        return (await self.read_frames(org, since, limit=limit, t=t)).frames

    async def read_frames(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> FramePage:
        """Frames with ``sid > since`` and the log's bounds, read in one snapshot."""
        check_text(org, "org")
        values.check_int(since, "since")
        values.check_at_least(limit, "limit", 1)
        check_opt_text(t, "t")
        return await self._read(reads.read_frames, org, since, limit, t)

    async def frame_bounds(self, org: str) -> tuple[int, int]:
        """``(oldest retained sid - 1, newest sid)`` of ``org``; ``(0, 0)`` if none."""
        check_text(org, "org")
        return await self._read(reads.frame_bounds, org)

    async def record_frames(
        self, org: str, t: str, id: str, since: int, *, limit: int = 10_000
    ) -> list[Frame]:
        """Frames of record ``(t, id)`` with ``sid > since``, oldest first."""
        _check_record(org, t, id)
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
        """Per field, the newest frame after ``since`` of another writer that set it,
        ``(field, who, sid)``; ``(None, who, sid)`` for the newest delete."""
        _check_record(org, t, id)
        values.check_int(since, "since")
        for name in fields:
            check_text(name, "field")
        who, client_id = exclude
        check_opt_text(who, "who")
        check_opt_text(client_id, "client_id")
        return await self._read(reads.record_writers, org, t, id, since, list(fields), exclude)

    async def get_record(self, org: str, t: str, id: str) -> RecordRow | None:
        """The stored projection of record ``(t, id)``, or ``None``."""
        _check_record(org, t, id)
        return await self._read(reads.get_record, org, t, id)

    async def list_records(
        self,
        org: str,
        *,
        t: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> tuple[list[RecordRow], int]:
        """Records by ``(t, id)`` after ``after``, and the newest sid, in one snapshot."""
        check_text(org, "org")
        check_opt_text(t, "t")
        if after is not None:
            check_text(after[0], "after t")
            check_text(after[1], "after id")
        values.check_at_least(limit, "limit", 1)
        return await self._read(reads.list_records, org, t, after, limit)

    async def stale_records(self, limit: int = 1000) -> list[tuple[str, str]]:
        """``(org, name)`` of record docs whose projection lags their update log."""
        values.check_int(limit, "limit")
        return await self._read(reads.stale_records, limit)

    async def get_mutation(self, org: str, client_tx_id: str) -> dict[str, Any] | None:
        """The stored result of the mutation with this idempotency key, if any."""
        check_text(org, "org")
        check_text(client_tx_id, "client_tx_id")
        return await self._read(reads.get_mutation, org, client_tx_id)

    # -- versions ----------------------------------------------------------------------

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
        """Store a version of the doc (see :mod:`persistence.postgres.versions_sql`):
        the writer is flushed first, then the version committed on its own."""
        self._check_open()
        check_text(org, "org")
        check_text(name, "name")
        checked = versions.check_version(org, name, state, authors, label, at)
        await self.flush()
        return await self._write(versions_sql.put_version, org, name, checked)

    async def delete_versions(self, org: str, name: str, versions: Sequence[int]) -> int:
        """Delete these versions of the doc; how many were deleted, once committed."""
        self._check_open()
        check_text(org, "org")
        check_text(name, "name")
        ids = []
        for version in versions:
            values.check_int(version, "version")
            ids.append(version)
        return int(await self._write(versions_sql.delete_versions, org, name, sorted(set(ids))))

    async def list_versions(
        self, org: str, name: str, *, before: int | None = None, limit: int = 100
    ) -> list[VersionInfo]:
        """The doc's versions with an id below ``before``, newest first."""
        check_text(org, "org")
        check_text(name, "name")
        versions.check_list_args(org, name, before, limit)
        return await self._read(versions_sql.list_versions, org, name, before, limit)

    async def get_version(
        self, org: str, name: str, version: int
    ) -> tuple[VersionInfo, bytes] | None:
        """A version of the doc and its state, or ``None``."""
        check_text(org, "org")
        check_text(name, "name")
        values.check_int(version, "version")
        return await self._read(versions_sql.get_version, org, name, version)

    # -- plumbing ----------------------------------------------------------------------

    def _check_open(self) -> Writer:
        check_open(self._state, f"PostgresStore({self._where})")
        assert self._writer is not None
        return self._writer

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._check_open()
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=self._acquire_timeout) as conn:
                return await fn(conn, *args)
        except psycopg.Error as exc:
            raise errors.read_error(self._where, exc) from exc

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
        """See :meth:`persistence.store.Store.claim_delivery` (row locks with ``SKIP
        LOCKED``: two nodes never claim the same delivery or endpoint and org)."""
        check_text(owner, "owner")
        op = outbox.claim(
            endpoint,
            owner=owner,
            now=values.now_ms(),
            lease_ms=lease_ms,
            max_batch=max_batch,
            throttle_ms=throttle_ms,
            pg=True,
        )
        return await self._write(outbox.run_async, op)

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
        if error is not None:
            error = error.replace("\x00", "")
        op = outbox.finish(
            delivery_id,
            owner=owner,
            outcome=outcome,
            now=values.now_ms(),
            next_attempt_at=next_attempt_at,
            error=error,
            status=status,
            endpoints=tuple(endpoints),
            pg=True,
        )
        return bool(await self._write(outbox.run_async, op))

    async def replay_deliveries(
        self, delivery_id: int | None = None, *, org: str | None = None
    ) -> int:
        """See :meth:`persistence.store.Store.replay_deliveries`."""
        op = outbox.replay(delivery_id, now=values.now_ms(), org=org)
        return int(await self._write(outbox.run_async, op))

    async def webhook_status(self, endpoints: Sequence[str]) -> OutboxStatus:
        """See :meth:`persistence.store.Store.webhook_status`."""
        return await self._write(outbox.run_async, outbox.status(tuple(endpoints)))

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(connection, *args)`` on a pooled connection: a write of its own."""
        self._check_open()
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=self._acquire_timeout) as conn:
                return await fn(conn, *args)
        except psycopg.Error as exc:
            raise errors.write_error(self._where, exc) from exc


def _check_record(org: str, t: str, id: str) -> None:
    for value, what in ((org, "org"), (t, "t"), (id, "id")):
        check_text(value, what)
