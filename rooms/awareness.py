"""A room's view of the awareness (presence, cursors) of its clients.

The server has no awareness state of its own; it keeps what clients sent so that
it can (a) greet a new connection with everyone's current state and (b) broadcast
the removal of every client ID a connection carried when that connection ends,
so that no ghost cursor stays behind. Acceptance follows y-protocols
``applyAwarenessUpdate``: a newer clock wins; an equal clock wins only to remove.

Bounded (issue 10): a removal of a client ID the room does not know is not recorded;
removed entries ("tombstones", kept so that a late copy of an older state cannot
come back) and states not renewed are forgotten after the outdated timeout, as
y-protocols clients forget them; one connection may carry at most
``max_per_owner`` live client IDs and the room at most ``max_per_room``, each
state at most ``max_state_bytes`` long: past any, :meth:`RoomAwareness.apply`
raises :class:`~rooms.limits.LimitExceeded` (close 4460) and records nothing of
that message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .close_codes import CloseCode
from .codec import AwarenessEntry
from .limits import LimitExceeded


@dataclass(slots=True)
class _Known:
    clock: int
    state: str | None  # JSON text, None once removed
    updated: float  # monotonic seconds
    owner: int | None  # connection id it last came through


class RoomAwareness:
    """Awareness states of one room, with the connection each came through.

    Args:
        outdated_seconds: Forget a state (or a removal) not renewed for this long.
        max_per_owner: Live client IDs one connection may carry.
        max_per_room: Live client IDs in the room.
        max_state_bytes: Largest state (its JSON text) one client ID may publish.
    """

    def __init__(
        self,
        outdated_seconds: float = 30.0,
        *,
        max_per_owner: int = 64,
        max_per_room: int = 10_000,
        max_state_bytes: int = 64 * 1024,
    ) -> None:
        # In order of last change (oldest first): what is outdated is at the front.
        self._known: dict[int, _Known] = {}
        self._by_owner: dict[int, set[int]] = {}
        self._outdated = outdated_seconds
        self._live = 0
        self.max_per_owner = max_per_owner
        self.max_per_room = max_per_room
        self.max_state_bytes = max_state_bytes

    def __len__(self) -> int:
        return self._live

    @property
    def entries(self) -> int:
        """Entries held, removed ones included (what this costs in memory)."""
        return len(self._known)

    def apply(
        self, owner: int, entries: Iterable[AwarenessEntry], *, per_owner_limit: bool = True
    ) -> list[AwarenessEntry]:
        """Record entries received through connection ``owner``; return those accepted.

        ``per_owner_limit=False``: ``owner`` stands for another node, which checked
        its own connections' limit (the room's limit still holds).

        Raises:
            LimitExceeded: the message would make ``owner`` carry more than
                ``max_per_owner`` live client IDs, or the room more than
                ``max_per_room``; nothing of it is recorded.
        """
        now = time.monotonic()
        self.prune(now)
        entries = list(entries)
        self._check_limits(owner, entries, per_owner_limit)
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
            if removing and (known is None or known.state is None):
                # Nothing to remove: remembering it would let anyone fill memory with
                # client IDs nobody ever saw. Still accepted (relayed) as y-protocols does.
                if known is not None:
                    self._set(entry.client_id, _Known(entry.clock, None, now, None))
                accepted.append(entry)
                continue
            if known is not None and known.owner is not None:
                self._disown(known.owner, entry.client_id)
            if removing:
                self._set(entry.client_id, _Known(entry.clock, None, now, None))
            else:
                self._set(entry.client_id, _Known(entry.clock, entry.state, now, owner))
                self._by_owner.setdefault(owner, set()).add(entry.client_id)
            accepted.append(entry)
        return accepted

    def _check_limits(
        self, owner: int, entries: list[AwarenessEntry], per_owner_limit: bool = True
    ) -> None:
        for entry in entries:
            if len(entry.state) > self.max_state_bytes:
                raise LimitExceeded(
                    CloseCode.AWARENESS_LIMIT,
                    "awareness_state_too_large",
                    f"awareness state of client {entry.client_id} is larger than "
                    f"{self.max_state_bytes} bytes (--max-awareness-state-bytes)",
                )
        owned = self._by_owner.get(owner, ())
        adding: set[int] = set()
        for entry in entries:
            if entry.removed or entry.client_id in owned:
                continue
            known = self._known.get(entry.client_id)
            if known is None or known.clock < entry.clock:
                adding.add(entry.client_id)
        if not adding:
            return
        if per_owner_limit and len(owned) + len(adding) > self.max_per_owner:
            raise LimitExceeded(
                CloseCode.AWARENESS_LIMIT,
                "too_many_awareness_clients",
                f"one connection may carry {self.max_per_owner} awareness client ids "
                "(--max-awareness-ids-per-connection)",
            )
        new_live = sum(1 for cid in adding if not self._is_live(cid))
        if self._live + new_live > self.max_per_room:
            raise LimitExceeded(
                CloseCode.AWARENESS_LIMIT,
                "too_many_awareness_clients",
                f"the room holds {self._live} awareness client ids, at most "
                f"{self.max_per_room} (--max-awareness-ids-per-room)",
            )

    def _is_live(self, client_id: int) -> bool:
        known = self._known.get(client_id)
        return known is not None and known.state is not None

    def _set(self, client_id: int, known: _Known) -> None:
        """Record ``known`` as the newest change (at the end of the order)."""
        old = self._known.pop(client_id, None)
        self._live += (known.state is not None) - (old is not None and old.state is not None)
        self._known[client_id] = known

    def prune(self, now: float | None = None) -> int:
        """Forget states and removals not renewed within the outdated timeout.

        Clients drop such states themselves (y-protocols ``outdatedTimeout``), so a
        newcomer is not sent them; a removal older than that cannot be undone by a
        late copy any client still relays. Returns how many entries were dropped.
        """
        horizon = (time.monotonic() if now is None else now) - self._outdated
        dropped = 0
        while self._known:
            client_id, known = next(iter(self._known.items()))
            if known.updated >= horizon:
                break
            del self._known[client_id]
            if known.state is not None:
                self._live -= 1
            if known.owner is not None:
                self._disown(known.owner, client_id)
            dropped += 1
        return dropped

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
            self._set(client_id, _Known(clock, None, now, None))
            removals.append(AwarenessEntry(client_id, clock, "null"))
        return removals

    def current(self, *, local_only: bool = False) -> list[AwarenessEntry]:
        """Live states, leaving out those not renewed within the outdated timeout.

        ``local_only``: only those that came through this node's connections (owners
        >= 0; another node's states have negative owners, see :mod:`rooms.replica`).
        """
        self.prune()
        return [
            AwarenessEntry(client_id, known.clock, known.state)
            for client_id, known in self._known.items()
            if known.state is not None
            and not (local_only and (known.owner is None or known.owner < 0))
        ]

    def _disown(self, owner: int, client_id: int) -> None:
        owned = self._by_owner.get(owner)
        if owned is not None:
            owned.discard(client_id)
            if not owned:
                del self._by_owner[owner]
