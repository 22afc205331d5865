"""The lifecycle every store shares: ``new`` -> (``starting``) -> ``open`` -> ``closed``.

:class:`StartClose` gives a store ``async with store:`` (start, then close);
:func:`check_open` is the check of every write and read against the state.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from persistence.store import StoreClosedError, StoreError

__all__ = ["StartClose", "check_open"]


def check_open(state: str, label: str) -> None:
    """Raise unless ``state`` is ``"open"``.

    Args:
        state: The store's state.
        label: How errors name the store (``SQLiteStore('/path')``).

    Raises:
        StoreError: the store is not started yet.
        StoreClosedError: it was closed.
    """
    if state == "open":
        return
    if state in ("new", "starting"):
        raise StoreError(f"{label} is not started; call start() first")
    raise StoreClosedError(f"{label} is closed")


class StartClose:
    """``async with store:`` runs :meth:`start`, then :meth:`close` on the way out."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
