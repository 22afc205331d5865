"""A room's view of the awareness (presence, cursors) of its clients.

The server has no awareness state of its own; it keeps what clients sent so that
it can (a) greet a new connection with everyone's current state and (b) broadcast
the removal of every client ID a connection carried when that connection ends,
so that no ghost cursor stays behind. Acceptance follows y-protocols
``applyAwarenessUpdate``: a newer clock wins; an equal clock wins only to remove.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .wire import AwarenessEntry


@dataclass(slots=True)
class _Known:
    clock: int
    state: str | None  # JSON text, None once removed
    updated: float  # monotonic seconds
    owner: int | None  # connection id it last came through


class RoomAwareness:
    """Awareness states of one room, with the connection each came through."""

    def __init__(self, outdated_seconds: float = 30.0) -> None:
        self._known: dict[int, _Known] = {}
        self._by_owner: dict[int, set[int]] = {}
        self._outdated = outdated_seconds

    def __len__(self) -> int:
        return sum(1 for k in self._known.values() if k.state is not None)

    def apply(self, owner: int, entries: Iterable[AwarenessEntry]) -> list[AwarenessEntry]:
        """Record entries received through connection ``owner``; return those accepted."""
        now = time.monotonic()
        accepted = []
        for entry in entries:
            known = self._known.get(entry.client_id)
            current_clock = -1 if known is None else known.clock
            removing = entry.removed
            if not (
                current_clock < entry.clock
                or (current_clock == entry.clock and removing and known and known.state is not None)
            ):
                continue
            if known is not None and known.owner is not None:
                self._disown(known.owner, entry.client_id)
            if removing:
                self._known[entry.client_id] = _Known(entry.clock, None, now, None)
            else:
                self._known[entry.client_id] = _Known(entry.clock, entry.state, now, owner)
                self._by_owner.setdefault(owner, set()).add(entry.client_id)
            accepted.append(entry)
        return accepted

    def client_ids_of(self, owner: int) -> set[int]:
        """Client IDs whose live state last came through connection ``owner``."""
        return set(self._by_owner.get(owner, ()))

    def remove_owner(self, owner: int) -> list[AwarenessEntry]:
        """Forget connection ``owner``; return removal entries (clock + 1) to broadcast."""
        removals = []
        now = time.monotonic()
        for client_id in sorted(self._by_owner.pop(owner, ())):
            known = self._known[client_id]
            if known.state is None:
                continue
            clock = known.clock + 1
            self._known[client_id] = _Known(clock, None, now, None)
            removals.append(AwarenessEntry(client_id, clock, "null"))
        return removals

    def current(self) -> list[AwarenessEntry]:
        """Live states, leaving out those not renewed within the outdated timeout."""
        horizon = time.monotonic() - self._outdated
        return [
            AwarenessEntry(client_id, known.clock, known.state)
            for client_id, known in self._known.items()
            if known.state is not None and known.updated >= horizon
        ]

    def _disown(self, owner: int, client_id: int) -> None:
        owned = self._by_owner.get(owner)
        if owned is not None:
            owned.discard(client_id)
            if not owned:
                del self._by_owner[owner]
