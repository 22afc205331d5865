"""Frame drafts for store tests: :func:`frame_draft` builds one, each suite keeps its
own defaults in a thin ``draft`` wrapper."""

from __future__ import annotations

from typing import Any

from persistence.store import FrameDraft

#: ``record=KEEP``: the record the draft leaves behind is its ``p`` (none for ``d``).
KEEP: Any = object()


def frame_draft(
    t: str,
    id: str,
    op: str,
    p: dict[str, Any],
    *,
    record: Any = KEEP,
    update_id: int | None = None,
    who: str | None,
    at: int,
    ctx: dict[str, Any] | None = None,
) -> FrameDraft:
    """A frame draft of record ``(t, id)``; ``ctx`` defaults to ``{"client_tx_id": None}``."""
    if record is KEEP:
        record = None if op == "d" else dict(p)
    return FrameDraft(
        t=t,
        id=id,
        op=op,
        p=p,
        who=who,
        at=at,
        ctx={"client_tx_id": None} if ctx is None else ctx,
        record=record,
        update_id=update_id,
    )
