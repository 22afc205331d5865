"""Frame batches checked and serialised on the event loop, before they are queued.

Every backend checks a :class:`~persistence.store.FrameBatch` the same way before it
queues it (a bad value fails only its own call; once queued it would fail the whole
group-commit batch it landed in) and holds its values as the strict JSON text it
stores (:func:`persistence.values.dumps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from persistence import values
from persistence.store import FrameBatch, FrameDraft

__all__ = ["OPS", "PreparedBatch", "PreparedFrame", "batch_size", "prepare"]

OPS = frozenset({"i", "u", "d"})


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    draft: FrameDraft
    p: str
    ctx: str
    record: str | None


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    org: str
    frames: tuple[PreparedFrame, ...]
    mutation: tuple[str, str] | None  # (client_tx_id, result JSON)


def prepare(
    org: str,
    batch: FrameBatch,
    *,
    check_text: Callable[[object, str], None] = values.check_text,
) -> PreparedBatch:
    """Check and serialise ``batch``.

    Args:
        org: The tenant.
        batch: The drafts and the idempotency key.
        check_text: The backend's check of a text value (PostgreSQL's also refuses NUL).

    Raises:
        TypeError, ValueError: a value the store cannot hold
            (:class:`~persistence.values.UnstorableValue`: not strict JSON or text).
    """
    check_text(org, "org")
    frames = []
    for draft in batch.frames:
        for value, what in ((draft.t, "t"), (draft.id, "id"), (draft.op, "op")):
            check_text(value, what)
        if draft.op not in OPS:
            raise ValueError(f"op must be one of i, u, d; got {draft.op!r}")
        if draft.who is not None:
            check_text(draft.who, "who")
        values.check_int(draft.at, "at")
        if draft.update_id is not None:
            values.check_int(draft.update_id, "update_id")
        if (draft.record is None) != (draft.op == "d"):
            raise ValueError("a frame leaves a record projection unless op is 'd'")
        record = None if draft.record is None else values.dumps(draft.record, "record")
        frames.append(
            PreparedFrame(draft, values.dumps(draft.p, "p"), values.dumps(draft.ctx, "ctx"), record)
        )
    mutation = None
    if batch.mutation is not None:
        client_tx_id, result = batch.mutation
        check_text(client_tx_id, "client_tx_id")
        mutation = (client_tx_id, values.dumps(result, "result"))
    return PreparedBatch(org, tuple(frames), mutation)


def batch_size(batch: PreparedBatch | None) -> int:
    """Bytes of ``batch``'s serialised values (counted against the queue bound)."""
    if batch is None:
        return 0
    size = sum(len(f.p) + len(f.ctx) + len(f.record or "") for f in batch.frames)
    return size + (len(batch.mutation[1]) if batch.mutation is not None else 0)
