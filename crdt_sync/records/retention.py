"""The frame log kept near ``--frame-retention`` frames per tenant.

:meth:`FrameRetention.count` is told of every frame this node commits (the
:class:`~crdt_sync.records.publisher.FramePublisher`'s ``on_published``); once a
tenant has a tenth of its retention more, :meth:`FrameRetention.run` trims its log.

It sits with the writers, not with the frame stream: it counts what this node commits
(on several nodes, each trims for its own writes, not every node for every frame it
hears of on the bus), and it orders nothing a subscriber sees. What a subscriber has
seen is the frame stream's: one that needs frames trimmed meanwhile gets
``since_too_old`` (see ``crdt_sync.sync_stream.catch_up``), never a silent gap.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from persistence.store import Store, StoreError

log = logging.getLogger(__name__)

#: Trim the frame log when it holds this much more than --frame-retention.
TRIM_SLACK = 0.1


class FrameRetention:
    """Trims each tenant's frame log to ``retention`` frames, as frames are committed.

    Args:
        store: Where the frame log is.
        retention: Frames kept per tenant.
    """

    def __init__(self, store: Store, retention: int = 1_000_000) -> None:
        self.store = store
        self.retention = retention
        self._since_trim: dict[str, int] = {}
        self._trim_due: set[str] = set()
        self._trim_wake = anyio.Event()

    def count(self, frames: list[Any]) -> None:
        """Frames this node committed (in a commit's done-callback: no I/O here)."""
        for frame in frames:
            self._since_trim[frame.org] = self._since_trim.get(frame.org, 0) + 1
        for org, count in list(self._since_trim.items()):
            if count > max(1, int(self.retention * TRIM_SLACK)):
                self._since_trim[org] = 0
                self._trim_due.add(org)
                self._trim_wake.set()

    async def run(self) -> None:
        """Keep each tenant's frame log near ``--frame-retention`` frames."""
        while True:
            await self._trim_wake.wait()
            self._trim_wake = anyio.Event()
            due, self._trim_due = self._trim_due, set()
            for org in sorted(due):
                try:
                    deleted = await self.store.trim_frames(org, self.retention)
                except StoreError as exc:
                    log.error("org=%s frames not trimmed: %s", org, exc)
                    continue
                if deleted:
                    log.info("org=%s trimmed %d frames (keeping %d)", org, deleted, self.retention)
