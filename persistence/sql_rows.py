"""Rows read by the SQL backends (SQLite, PostgreSQL), decoded into store values.

Both schemas hold frames, records and mutation results in the same columns, with JSON
as text; a column that is not readable JSON raises
:class:`~persistence.store.StoreReadError` naming the row, never a bare ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from persistence import values
from persistence.store import Frame, RecordRow, StoreReadError

__all__ = ["FRAME_COLUMNS", "RECORD_COLUMNS", "frames", "loads", "mutation_result", "record"]

#: The columns :func:`frames` decodes, in order.
FRAME_COLUMNS = "sid, org, t, id, op, p, who, at, ctx"

#: The columns :func:`record` decodes, in order.
RECORD_COLUMNS = "t, id, fields, sid, update_id, updated_at"


def loads(text: object, what: str) -> Any:
    """Parse the JSON column of ``what`` (see :func:`persistence.values.loads`)."""
    if not isinstance(text, str):
        raise StoreReadError(f"{what} is unreadable: JSON column is {type(text).__name__}")
    try:
        return values.loads(text)
    except ValueError as exc:
        raise StoreReadError(f"{what} is unreadable: {exc}") from exc


def frames(rows: Iterable[Any]) -> list[Frame]:
    """Rows of :data:`FRAME_COLUMNS` as frames."""
    return [
        Frame(
            sid=int(sid),
            org=org_,
            t=t_,
            id=id_,
            op=op,
            p=loads(p, f"frame {sid}"),
            who=who,
            at=int(at),
            ctx=loads(ctx, f"frame {sid}"),
        )
        for sid, org_, t_, id_, op, p, who, at, ctx in rows
    ]


def record(row: Any) -> RecordRow:
    """A row of :data:`RECORD_COLUMNS` as a record."""
    t, id_, fields, sid, update_id, updated_at = row
    return RecordRow(
        t=t,
        id=id_,
        fields=loads(fields, f"record {t}/{id_}"),
        sid=int(sid),
        update_id=int(update_id),
        updated_at=int(updated_at),
    )


def mutation_result(row: Any, org: str, client_tx_id: str) -> dict[str, Any]:
    """A ``(result, sid)`` row of ``mutations``: the stored result, with the sid of the
    batch's last frame as ``"sid"`` when it logged one."""
    result = loads(row[0], f"mutation {client_tx_id!r} (org {org!r})")
    if row[1] is not None and isinstance(result, dict):
        result["sid"] = int(row[1])
    return result
