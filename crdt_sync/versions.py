"""Versions of docs: when this node takes one, who it credits, what it keeps.

:class:`VersionKeeper` is a :class:`~rooms.listener.RoomListener` (beside the record
feed, see :class:`rooms.listeners.Listeners`). Per loaded doc it counts this node's
own changes since the doc's last version (origins ``CLIENT``, ``HTTP``, ``MUTATION``;
never ``REMOTE`` or ``STORE``: on several nodes each change is counted by the node
it came in through, so two nodes do not both version it) and remembers their actors,
the next version's ``authors``.

A version is taken automatically (unless ``auto`` is off):

* after ``every_updates`` own changes since the last version (0: never for this), or
* once a doc with own changes since its last version has had none for
  ``idle_seconds`` (0: never for this), or
* when a room with own changes since its last version is unloaded;

and on demand (:meth:`take`: ``POST /docs/{doc}/versions``, a restore). After each
version the doc's versions are thinned by :mod:`crdt_sync.version_retention`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from persistence.store import Store, StoreError, VersionInfo
from persistence.values import now_ms
from persistence.versions import MAX_AUTHORS
from rooms.room import Origin, Room, RoomState

from .version_retention import RetentionPolicy, to_drop

log = logging.getLogger(__name__)

#: Origins of this node's own changes.
OWN = frozenset({Origin.CLIENT, Origin.HTTP, Origin.MUTATION})
#: Versions read per page when retention lists a doc's versions.
_PAGE = 1000
#: Seconds before an automatic version that failed (store down) is tried again.
RETRY_SECONDS = 30.0


@dataclass(slots=True)
class _Pending:
    """Own changes of one doc since its last version."""

    changes: int = 0
    authors: dict[str, None] = field(default_factory=dict)  # ordered set, first first
    last_change: float = 0.0  # monotonic
    retry_at: float = 0.0  # monotonic: after a failed automatic version, not before


class VersionKeeper:
    """Takes versions of docs and thins them (see the module docstring).

    Args:
        store: Where versions are kept.
        auto: Take versions automatically.
        every_updates: Own changes that make a version (0: not a trigger).
        idle_seconds: Quiet time after own changes that makes a version (0: not a trigger).
        policy: Which versions to keep.
        clock: Epoch milliseconds (versions' ``created_at``, retention's ``now``).
    """

    def __init__(
        self,
        store: Store,
        *,
        auto: bool = True,
        every_updates: int = 1000,
        idle_seconds: float = 60.0,
        policy: RetentionPolicy | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.auto = auto and (every_updates > 0 or idle_seconds > 0)
        self.every_updates = every_updates
        self.idle_seconds = idle_seconds
        self.policy = policy if policy is not None else RetentionPolicy()
        self.clock = clock
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._due = anyio.Event()
        self._manager: Any = None
        #: Versions taken automatically and on demand, and versions deleted by retention.
        self.auto_taken = 0
        self.taken = 0
        self.dropped = 0

    # -- RoomListener ------------------------------------------------------------

    async def room_loaded(self, room: Room) -> None:
        return None

    def room_changing(self, room: Room, actor: str | None, origin: Origin) -> None:
        return None

    def room_changed(self, room: Room, actor: str | None, origin: Origin) -> None:
        if origin in OWN:
            self.noted(room, actor)

    def room_awareness(self, room: Room) -> None:
        return None

    async def room_unloading(self, room: Room) -> None:
        """Version what changed since the last version before the doc goes (a failure
        is logged: the doc itself is stored by the unload whatever happens here)."""
        if self.auto and self._pending.get((room.org, room.name)):
            try:
                await self._take(room, label=None, auto=True)
            except StoreError as exc:
                log.warning("doc=%r org=%r version on unload failed: %s", room.name, room.org, exc)

    def room_unloaded(self, room: Room) -> None:
        self._pending.pop((room.org, room.name), None)

    # -- changes that do not come through the listener ------------------------------

    def noted(self, room: Room, actor: str | None) -> None:
        """An own change of ``room``'s doc by ``actor`` (HTTP mutations call this)."""
        pending = self._pending.get((room.org, room.name))
        if pending is None:
            pending = self._pending[(room.org, room.name)] = _Pending()
        pending.changes += 1
        pending.last_change = time.monotonic()
        if actor is not None and len(pending.authors) < MAX_AUTHORS:
            pending.authors[actor] = None
        if self.auto and self.every_updates and pending.changes >= self.every_updates:
            self._due.set()

    def authors_of(self, room: Room) -> list[str]:
        """Who changed the doc through this node since its last version."""
        pending = self._pending.get((room.org, room.name))
        return list(pending.authors) if pending is not None else []

    def has_changes(self, room: Room) -> bool:
        pending = self._pending.get((room.org, room.name))
        return pending is not None and pending.changes > 0

    # -- taking versions ---------------------------------------------------------

    async def take(self, room: Room, *, label: str | None = None) -> VersionInfo | None:
        """A version of the room's doc now, on demand; ``None`` if the doc is not stored.

        Raises:
            ValueError: a label the store refuses (too long).
            StoreError: the version could not be stored (the pending authors are kept
                for the next one).
        """
        return await self._take(room, label=label, auto=False)

    async def _take(self, room: Room, *, label: str | None, auto: bool) -> VersionInfo | None:
        key = (room.org, room.name)
        # The state and the authors it covers are taken together, before any wait.
        state = room.doc.get_update()
        pending = self._pending.pop(key, None)
        authors = list(pending.authors) if pending is not None else []
        try:
            info = await self.store.put_version(
                room.org, room.name, state, authors=authors, label=label, at=self.clock()
            )
        except BaseException:
            if pending is not None:  # credited to the next version instead
                merged = self._pending.setdefault(key, _Pending())
                merged.changes += pending.changes
                merged.last_change = max(merged.last_change, pending.last_change)
                if auto:
                    merged.retry_at = time.monotonic() + RETRY_SECONDS
                for actor in pending.authors:
                    merged.authors.setdefault(actor, None)
            raise
        if info is None:
            return None
        if auto:
            self.auto_taken += 1
        else:
            self.taken += 1
        log.info(
            "doc=%r org=%r version %d taken (%s, %d bytes, authors %s)",
            room.name,
            room.org,
            info.version,
            "auto" if auto else "on demand",
            info.size,
            ",".join(info.authors) or "-",
        )
        await self.retain(room.org, room.name, current_size=len(state))
        return info

    async def retain(self, org: str, name: str, *, current_size: int) -> int:
        """Apply the retention policy to the doc's versions; how many were deleted
        (a failure is logged, not raised: the version that triggered it is stored)."""
        try:
            versions: list[VersionInfo] = []
            before: int | None = None
            while True:
                page = await self.store.list_versions(org, name, before=before, limit=_PAGE)
                versions += page
                if len(page) < _PAGE:
                    break
                before = page[-1].version
            now = self.clock()
            drop = to_drop(versions, now=now, current_size=current_size, policy=self.policy)
            if not drop:
                return 0
            deleted = await self.store.delete_versions(org, name, drop)
        except StoreError as exc:
            log.warning("doc=%r org=%r version retention failed: %s", name, org, exc)
            return 0
        self.dropped += deleted
        log.info("doc=%r org=%r retention deleted %d versions", name, org, deleted)
        return deleted

    # -- the automatic loop ------------------------------------------------------

    async def run(self, manager: Any, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Take the versions that are due, until cancelled (under the supervisor)."""
        self._manager = manager
        task_status.started()
        if not self.auto:
            return
        await manager.supervisor.loop("versions", self._loop)

    def _tick(self) -> float:
        return min(1.0, self.idle_seconds / 4) if self.idle_seconds > 0 else 1.0

    async def _loop(self) -> None:
        while True:
            with anyio.move_on_after(self._tick()):
                await self._due.wait()
            self._due = anyio.Event()
            now = time.monotonic()
            for key in [k for k, p in self._pending.items() if self._is_due(p, now)]:
                room = self._manager.rooms.get(key)
                if room is None or room.state is not RoomState.LOADED:
                    continue
                try:
                    await self._take(room, label=None, auto=True)
                except StoreError as exc:
                    log.warning("doc=%r org=%r automatic version failed: %s", key[1], key[0], exc)

    def _is_due(self, pending: _Pending, now: float) -> bool:
        if not pending.changes or now < pending.retry_at:
            return False
        if self.every_updates and pending.changes >= self.every_updates:
            return True
        return bool(self.idle_seconds) and now - pending.last_change >= self.idle_seconds
