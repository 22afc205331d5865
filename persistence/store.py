"""The store contract every backend implements (memory, SQLite, PostgreSQL).

Everything is keyed by ``(org, name)``: ``org`` is the tenant (``"default"`` while
auth is off) and ``name`` the document name as clients send it (``issue/123``).
No method returns or changes another org's rows: the same doc name, record id or
``client_tx_id`` in two orgs are two independent keys.

Frame sids are per tenant: each org's frames are numbered 1, 2, 3, ... by the store
at commit, strictly increasing and never reused (not after trims, not after deletes),
whatever other orgs write. A client's sids therefore tell it nothing about other
tenants, and every ``since``/``newest``/``oldest`` is a position in its org's log.

Ids are the backend's: an update's ``update_id`` and a frame's ``sid`` are assigned
when the transaction holding them commits and are *returned* to the caller (in
:class:`Committed`); nobody passes ids back in to say "up to here". Update ids grow
per doc in commit order, and each commit names the doc's previous update
(:attr:`Committed.prev_update_id`), so a node that hears about updates out of band (a
bus) can tell a gap from a duplicate and read what it missed with
:meth:`Store.updates_since`.

No callbacks: the store never calls out of its writer. Whoever wrote frames gets them
back (with their sids) from the commit and publishes them on a frame bus; metrics read
:meth:`Store.stats`.

Durability contract:

* :meth:`Store.append` returns once the update is *queued*; the returned
  :class:`Appended` carries a :class:`Commit` that completes when the transaction
  holding it is durable (or raises :class:`StoreWriteError`).
* :meth:`Store.flush` waits until everything queued before the call is on disk.
* What a store hands out for a queued write is a :class:`Commit`: awaiting it from a
  task that is then cancelled abandons that wait only. The write is queued and will be
  committed (or fail) all the same, so its done-callbacks see that outcome, never
  ``cancelled()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from persistence.outbox import Delivery, EndpointSpec, OutboxStatus

_T = TypeVar("_T")


class StoreError(Exception):
    """Base class of every error a store raises."""


class StoreWriteError(StoreError):
    """A write could not be made durable (disk full, read-only file, I/O error)."""


class StoreReadError(StoreError):
    """Stored data could not be read back (corrupt row, unreadable file)."""


class StoreClosedError(StoreError):
    """The store was used after :meth:`Store.close`."""


class StoreUnavailableError(StoreWriteError):
    """The backend cannot be reached (a database server down): retry later (503)."""


class MutationReplayed(StoreError):
    """The idempotency key of a :class:`FrameBatch` was already stored (by another
    node, or earlier in the same transaction): the mutation was applied before.

    Raised by the commit of :meth:`Store.log_frames`, which then wrote nothing of its
    batch (no frame, no key, no deletion). An :meth:`Store.append` carrying the key
    still commits its update (the doc changed) but logs none of the batch's frames and
    reports the stored result in :attr:`Committed.replayed` instead.

    Attributes:
        client_tx_id: The key.
        result: The stored result, as :meth:`Store.get_mutation` returns it (with its
            ``sid``): what to answer the replay with.
    """

    def __init__(self, client_tx_id: str, result: dict[str, Any]) -> None:
        super().__init__(f"mutation {client_tx_id!r} was already applied")
        self.client_tx_id = client_tx_id
        self.result = result


class Commit(asyncio.Future[_T]):
    """The outcome of a queued write: settled by the store once its transaction is
    committed (the result) or has failed (the exception), and by nobody else.

    A plain ``asyncio.Future`` is cancelled when a task awaiting it is cancelled (a
    client gone, a shutdown timeout, ``move_on_after``), although the writer commits
    the write anyway: its done-callbacks would then see ``cancelled()`` and a failure
    would go unreported, an idempotency key would be released before its commit. So:

    * ``await commit`` waits through :func:`asyncio.shield`: a cancelled awaiter gets
      :class:`asyncio.CancelledError`, the commit goes on, and others (and later
      awaits) still get its outcome;
    * :meth:`cancel` refuses (returns ``False``), so ``asyncio.gather`` or
      ``wait_for`` cannot cancel it either (Python 3.11's ``asyncio.wait_for`` then
      waits for the commit after its timeout: bound an ``await`` with anyio's
      ``fail_after``/``move_on_after`` instead). A store that must give up on a
      write settles it itself (``set_exception``; ``asyncio.Future.cancel(commit)``).

    Everything else is ``asyncio.Future``'s: ``add_done_callback`` (called with the
    commit), ``done``, ``cancelled``, ``result``, ``exception``.
    """

    def __await__(self) -> Generator[Any, None, _T]:
        if self.done():
            return (yield from super().__await__())
        return (yield from asyncio.shield(self).__await__())

    __iter__ = __await__

    def cancel(self, msg: Any = None) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class StoredDoc:
    """What is needed to rebuild a document: snapshot plus the updates logged after it.

    Attributes:
        snapshot: The compacted state (a Yjs update), or ``None`` if never compacted.
        updates: Updates logged after the snapshot, oldest first.
        last_update_id: The id of the newest update covered (snapshot or log), 0 if none.
    """

    snapshot: bytes | None
    updates: list[bytes]
    last_update_id: int


@dataclass(frozen=True, slots=True)
class DocTail:
    """What :meth:`Store.updates_since` returns: enough to bring a replica that holds
    every update up to ``since`` to ``last_update_id``.

    Attributes:
        snapshot: ``None`` if every update after ``since`` is still in the log; else the
            compacted state (the log before it is gone): apply it, then ``updates``.
        updates: ``(update_id, update)`` logged after ``since`` (or after the
            snapshot), oldest first.
        last_update_id: The doc's newest update id (0: no such doc).
    """

    snapshot: bytes | None
    updates: list[tuple[int, bytes]]
    last_update_id: int


#: Upper bounds (``le``) of the commit histograms of :class:`StoreStats`: seconds of one
#: commit, and writes in one commit.
COMMIT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0
)  # fmt: skip
COMMIT_OPS_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters for metrics and ``/healthz`` (read, never pushed).

    The histograms (``commit_*``) count every commit since start: per bound of
    :data:`COMMIT_SECONDS_BUCKETS` / :data:`COMMIT_OPS_BUCKETS`, the commits at or
    below it (cumulative, as Prometheus buckets; ``commits`` is the ``+Inf`` one).
    """

    commits: int = 0  # transactions committed since start
    failed_batches: int = 0
    last_commit_seconds: float = 0.0
    last_batch_size: int = 0
    queued: int = 0  # writes waiting for the writer
    queued_bytes: int = 0
    refused_batches: int = 0
    commit_seconds_sum: float = 0.0
    commit_seconds_buckets: tuple[int, ...] = ()
    commit_ops_sum: int = 0
    commit_ops_buckets: tuple[int, ...] = ()


class CommitHistograms:
    """The commit histograms of :class:`StoreStats`, recorded by a backend's writer
    (any thread) and read on the event loop: one lock, taken once per commit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commits = 0
        self._seconds = [0] * len(COMMIT_SECONDS_BUCKETS)
        self._seconds_sum = 0.0
        self._ops = [0] * len(COMMIT_OPS_BUCKETS)
        self._ops_sum = 0

    def observe(self, ops: int, seconds: float) -> None:
        """One commit of ``ops`` writes that took ``seconds``."""
        with self._lock:
            self._commits += 1
            self._seconds_sum += seconds
            self._ops_sum += ops
            for i, bound in enumerate(COMMIT_SECONDS_BUCKETS):
                if seconds <= bound:
                    self._seconds[i] += 1
            for i, bound in enumerate(COMMIT_OPS_BUCKETS):
                if ops <= bound:
                    self._ops[i] += 1

    def fields(self) -> dict[str, Any]:
        """``commits`` and the ``commit_*`` fields of :class:`StoreStats`, consistent."""
        with self._lock:
            return {
                "commits": self._commits,
                "commit_seconds_sum": self._seconds_sum,
                "commit_seconds_buckets": tuple(self._seconds),
                "commit_ops_sum": self._ops_sum,
                "commit_ops_buckets": tuple(self._ops),
            }


@dataclass(frozen=True, slots=True)
class DocInfo:
    """One row of :meth:`Store.list_docs`."""

    name: str
    size: int  # bytes of snapshot + logged updates
    updated_at: int  # epoch milliseconds of the last write
    update_count: int  # updates in the log since the snapshot


@dataclass(frozen=True, slots=True)
class Committed:
    """The outcome of a committed :meth:`Store.append`.

    Attributes:
        update_id: The id the backend gave the update at commit (greater than every
            earlier update id of the doc).
        prev_update_id: The doc's newest update id before this one (0: the first). A
            replica whose newest is not this one missed something.
        frames: The frames committed with it, with their sids, in sid order.
    """

    update_id: int
    prev_update_id: int
    frames: list[Frame]
    #: The stored result when the batch's ``client_tx_id`` was already stored (see
    #: :class:`MutationReplayed`): then ``frames`` is empty, the update is committed.
    replayed: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """Returned by :meth:`Store.append` once the update is queued.

    Attributes:
        durable: Completes when the update is committed, with its :class:`Committed`.
    """

    durable: Commit[Committed]


@dataclass(frozen=True, slots=True)
class Frame:
    """A stored SyncFrame (see DESIGN.md). ``sid`` is assigned by the store, per ``org``."""

    sid: int
    org: str
    t: str
    id: str
    op: str
    p: dict[str, Any]
    who: str | None
    at: int
    ctx: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FrameDraft:
    """A SyncFrame to log, and the record projection it leaves behind.

    Attributes:
        record: The record's whole projection after this frame (``None`` for ``op="d"``:
            the record is gone), as the drafting node sees it (an insert of a record
            another node framed first becomes an update of the difference).
        update_id: The view the draft was made from: the drafting node holds every
            update of the doc up to this id (kept on the record row, to find records
            whose frames lag their doc: :meth:`Store.stale_records`). A draft from an
            older view than the row's is stale and not logged. ``None``: a node's own
            change, which covers the update the frame is logged with
            (:meth:`Store.append`), or, in :meth:`Store.log_frames`, the newest update
            of the doc that this store's node appended at that point of its queue (the
            doc's newest update, for one writer or a doc the node never appended to).

    Every backend logs a draft through :func:`persistence.framing.settle` against the
    stored record row, in the logging transaction (only what is new is logged; several
    nodes drafting one change log it once), and updates the row with
    :func:`persistence.framing.fold` (the row is what the frames say).
    """

    t: str
    id: str
    op: str
    p: dict[str, Any]
    who: str | None
    at: int
    ctx: dict[str, Any]
    record: dict[str, Any] | None
    update_id: int | None = None


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Frames logged in one transaction with the write they ride on.

    Attributes:
        frames: Logged in order; each gets the next sid of the batch's org.
        mutation: ``(client_tx_id, result)``: an idempotency key stored in the same
            transaction, remembering the sid of the batch's last frame (if any).
    """

    frames: tuple[FrameDraft, ...] = ()
    mutation: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class RecordRow:
    """The stored projection of a record: what its last frame left behind."""

    t: str
    id: str
    fields: dict[str, Any]
    sid: int
    update_id: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class FramePage:
    """A page of frames read in one transaction with the log's bounds.

    Attributes:
        frames: Frames with sid > ``since``, oldest first.
        oldest: The oldest retained sid - 1 (a ``since`` below it missed frames).
        newest: The newest sid of the tenant (0 if none).
    """

    frames: list[Frame]
    oldest: int
    newest: int


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One stored version of a doc (see :mod:`persistence.versions`), without its state.

    Attributes:
        version: The id the store gave it at commit (increasing, never reused).
        name: The doc's name.
        created_at: Epoch milliseconds of its creation.
        authors: Actors who changed the doc since the version before it.
        label: What a person named it, or ``None``.
        state_vector: The doc's Yjs state vector at that version.
        size: Bytes of the stored state.
    """

    version: int
    name: str
    created_at: int
    authors: tuple[str, ...]
    label: str | None
    state_vector: bytes
    size: int


@runtime_checkable
class Store(Protocol):
    """Async store of documents, their update logs, SyncFrames and idempotency keys."""

    async def start(self) -> None:
        """Open (and create or migrate) the store; start the writer."""
        ...

    async def close(self) -> None:
        """Commit everything queued, stop the writer, close connections."""
        ...

    async def load(self, org: str, name: str) -> StoredDoc | None:
        """Return the stored doc, or ``None`` if no such doc.

        Raises:
            StoreReadError: the rows exist but cannot be read.
        """
        ...

    async def has_doc(self, org: str, name: str) -> bool:
        """Whether the doc is stored, without reading its state."""
        ...

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
        """Queue ``update`` (with ``frames``, same transaction); return at once.

        Queues without yielding to the event loop, so callers can order writes. The
        update id is assigned at commit: see :attr:`Appended.durable`.
        """
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A block whose writes (:meth:`append`, :meth:`log_frames`) commit in ONE
        transaction, in the order queued: their frames get consecutive sids of their
        org and are reported by one commit (a mutation request's frames, one batch).

        Synchronous and never yielding: the caller must not yield to the event loop
        inside it, nor await a commit queued in it (it is handed to the writer when
        the block exits). Nested blocks join the outermost one.
        """
        ...

    def log_frames(
        self, org: str, batch: FrameBatch, *, delete: str | None = None
    ) -> Commit[list[Frame]]:
        """Queue frames (and an idempotency key, and the deletion of doc ``delete``)
        synchronously; the returned commit gives the frames logged (with their sids;
        drafts with nothing new left out, see :class:`FrameDraft`) once committed."""
        ...

    async def updates_since(self, org: str, name: str, since: int) -> DocTail:
        """What a replica holding the doc up to update ``since`` lacks (gap repair)."""
        ...

    def stats(self) -> StoreStats:
        """Counters of the writer (cheap; no I/O)."""
        ...

    def health(self) -> str | None:
        """``None`` when writes are going through; else why not (for ``/readyz``)."""
        ...

    async def probe(self) -> None:
        """One small write, to learn whether the backend is writable again.

        Raises:
            StoreWriteError: it is not.
        """
        ...

    async def flush(self) -> None:
        """Wait until every write queued before this call is committed.

        Raises:
            StoreWriteError: a queued write failed.
        """
        ...

    async def compact(self, org: str, name: str, state: bytes) -> None:
        """Fold ``state`` (a Yjs update holding at least everything appended to the doc
        before this call) into the snapshot and drop the log rows it covers.

        One transaction, queued behind earlier appends, awaited until committed. Safe
        when several writers hold the doc: what was logged by others and is missing
        from ``state`` is merged into the snapshot, never dropped. Deleted docs stay
        deleted (compacting a doc that is not stored does nothing unless it has never
        been stored: then it is created).
        """
        ...

    async def list_docs(
        self, org: str, *, prefix: str = "", limit: int = 100, cursor: str | None = None
    ) -> tuple[list[DocInfo], str | None]:
        """Docs whose name starts with ``prefix``, ordered by name; returns (page, next cursor)."""
        ...

    async def delete(self, org: str, name: str) -> bool:
        """Delete a doc, its snapshot and log; ``True`` if it existed. Awaited until committed."""
        ...

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
        """Log a frame, assign and return its ``sid`` (the next of ``org``) once committed."""
        ...

    async def frames_since(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> list[Frame]:
        """Frames of ``org`` with sid > ``since`` (optionally of type ``t``), oldest first."""
        ...

    async def frame_bounds(self, org: str) -> tuple[int, int]:
        """(oldest retained sid - 1, newest sid); (0, 0) when the log is empty."""
        ...

    async def trim_frames(self, org: str, keep: int) -> int:
        """Delete all but the newest ``keep`` frames of ``org``; return how many were deleted.

        Awaited until committed.
        """
        ...

    async def get_mutation(self, org: str, client_tx_id: str) -> dict[str, Any] | None:
        """The stored result of a mutation with this idempotency key, if any."""
        ...

    async def read_frames(
        self, org: str, since: int, *, limit: int = 1000, t: str | None = None
    ) -> FramePage:
        """Frames with sid > ``since`` and the log's bounds, from one read transaction."""
        ...

    async def record_frames(self, org: str, t: str, id: str, since: int) -> list[Frame]:
        """Frames of one record with sid > ``since``, oldest first."""
        ...

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
        """Per field of ``fields``, the newest frame after ``since`` of a writer other
        than ``exclude`` (``(who, client_id)``) that set it, as ``(field, who, sid)``;
        and ``(None, who, sid)`` for its newest delete. From an index, not by decoding."""
        ...

    async def get_record(self, org: str, t: str, id: str) -> RecordRow | None:
        """The stored projection of a record, or ``None`` if it does not exist."""
        ...

    async def list_records(
        self, org: str, *, t: str | None = None, after: tuple[str, str] | None = None, limit: int
    ) -> tuple[list[RecordRow], int]:
        """Records ordered by ``(t, id)`` after ``after``, and the newest sid, in one
        read transaction."""
        ...

    async def stale_records(self, limit: int = 1000) -> list[tuple[str, str]]:
        """``(org, doc name)`` of record docs whose stored projection lags their
        update log (a crash between an update and its frame)."""
        ...

    async def put_mutation(self, org: str, client_tx_id: str, result: dict[str, Any]) -> None:
        """Remember a mutation's result under its idempotency key. Awaited until committed."""
        ...

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
        """Store ``state`` (the doc's whole state, a Yjs update) as a new version of the
        doc, behind every write queued before the call; awaited until committed.

        Returns:
            Its info (with the id assigned at commit), or ``None`` if the doc is not
            stored (never was, or deleted): no version of a doc that is not there.

        Raises:
            ValueError: ``state`` is not a Yjs update, a label or the authors out of
                bounds (:mod:`persistence.versions`); nothing was queued.
            StoreWriteError: the write failed.
        """
        ...

    async def list_versions(
        self, org: str, name: str, *, before: int | None = None, limit: int = 100
    ) -> list[VersionInfo]:
        """The doc's versions with an id below ``before`` (all: ``None``), newest first."""
        ...

    async def get_version(
        self, org: str, name: str, version: int
    ) -> tuple[VersionInfo, bytes] | None:
        """A version of the doc and its state, or ``None`` (no such version of it)."""
        ...

    async def delete_versions(self, org: str, name: str, versions: Sequence[int]) -> int:
        """Delete these versions of the doc (ids it does not have are ignored); return
        how many were deleted. Awaited until committed.

        Deleting a doc (:meth:`delete`, or :meth:`log_frames` with ``delete``) deletes
        its versions in the same transaction.
        """
        ...

    # -- webhooks (see persistence.outbox; the store was opened with outbox=True) -------

    async def claim_delivery(
        self,
        endpoint: EndpointSpec,
        *,
        owner: str,
        lease_ms: int,
        max_batch: int,
        throttle_ms: int,
    ) -> Delivery | None:
        """Claim the endpoint's next batch for ``owner`` (leased for ``lease_ms``), in
        one transaction: a pending delivery that is due and unleased (a retry, a
        replay, one whose sender died), else a new batch of up to ``max_batch`` frames
        of one org past the endpoint's cursor, once one of its records was not sent
        within the last ``throttle_ms`` (or the batch is full): throttled per record.
        ``None``: nothing to send now. Two nodes never hold the same delivery, and per
        endpoint and org a new batch waits while one is pending."""
        ...

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
        """Report an attempt: ``ok`` (the row goes, the cursor advances, outbox rows
        every one of ``endpoints`` has passed are dropped), ``retry`` (attempt counted,
        next one at ``next_attempt_at``, lease released) or ``park``. Returns whether
        ``owner`` still held it (``ok`` applies regardless)."""
        ...

    async def replay_deliveries(
        self, delivery_id: int | None = None, *, org: str | None = None
    ) -> int:
        """Re-queue a parked delivery (all: ``None``; only ``org``'s, if given) with
        the same sid range; how many."""
        ...

    async def webhook_status(self, endpoints: Sequence[str]) -> OutboxStatus:
        """Cursors, backlogs and deliveries of these endpoints."""
        ...
