"""Settling the commits of a group-committed batch: the rule both writers apply.

Each op of a batch carries the future its caller awaits and, once the transaction is
over, its result or error. The futures are completed in queue order (their
done-callbacks then run in commit order: sid order within each org). A failure is
logged once for the whole batch by the writer, so each future's copy is marked
retrieved: an unawaited ``durable`` does not log it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from persistence.store import StoreWriteError

__all__ = ["SettledOp", "own_copy", "settle"]


class SettledOp(Protocol):
    @property
    def future(self) -> asyncio.Future[Any] | None: ...
    @property
    def result(self) -> Any: ...
    @property
    def error(self) -> BaseException | None: ...


def own_copy(error: BaseException) -> BaseException:
    """One exception object per future (its class kept: an outage stays a
    :class:`~persistence.store.StoreUnavailableError`): raising a shared one from many
    tasks would chain unrelated tracebacks onto it."""
    if isinstance(error, StoreWriteError):
        copy: Any = type(error)(*error.args)
        copy.__cause__ = error.__cause__
        return copy
    return error


def settle(ops: Iterable[SettledOp]) -> None:
    """Complete the future of each op, in order, with its result or (a copy of) its error.

    A future already done is left alone: settled by the store itself (a
    :class:`~persistence.store.Commit` is never cancelled by an abandoned await; a
    plain future, e.g. ``close()``'s, could be).
    """
    for op in ops:
        future = op.future
        if future is None or future.done():
            continue
        if op.error is None:
            future.set_result(op.result)
            continue
        future.set_exception(own_copy(op.error))
        future.exception()
