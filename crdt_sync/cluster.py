"""Which store and buses a node runs on, from its settings.

* Default: one node on the SQLite file ``--db``; nothing crosses nodes
  (:class:`~rooms.frame_bus.LocalFrameBus`, no broadcaster).
* ``--database-url postgresql://…``: the store shared by every node
  (:class:`persistence.postgres.PostgresStore`). Alone it is still one node, but its
  commits may be reported out of order (a connection pool), so the local frame bus
  sequences them.
* ``--redis-url`` too: several nodes. Room updates and awareness cross on a
  :class:`~rooms.redis_broadcaster.RedisBroadcaster`, committed frames on a
  :class:`~rooms.redis_frame_bus.RedisFrameBus`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from persistence.store import Frame, Store
from rooms.broadcaster import Broadcaster
from rooms.frame_bus import FrameBus, LocalFrameBus

from .settings import Settings

#: Frames read per store read when a bus repairs a gap.
GAP_READ_LIMIT = 1000


def node_id_of(settings: Settings, port: int | None = None) -> str:
    """``--node-id``, else ``host-port-pid``: unique per process on one machine."""
    if settings.node_id:
        return settings.node_id
    host = socket.gethostname().split(".", 1)[0] or "node"
    return f"{host}-{port if port is not None else settings.port}-{os.getpid()}"


def store_label(settings: Settings) -> str:
    """Where the node stores, for its ready line: the SQLite path, or the database URL
    without its password."""
    if not settings.database_url:
        return settings.db
    parts = urlsplit(settings.database_url)
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_store(settings: Settings) -> Store:
    if settings.database_url:
        from persistence.postgres import PostgresStore

        return PostgresStore(
            settings.database_url,
            commit_interval_ms=settings.commit_interval_ms,
            max_queued_write_bytes=settings.max_queued_write_bytes,
            outbox=bool(settings.webhook),
        )
    from persistence.sqlite import SQLiteStore

    return SQLiteStore(
        settings.db,
        commit_interval_ms=settings.commit_interval_ms,
        max_queued_bytes=settings.max_queued_write_bytes,
        outbox=bool(settings.webhook),
    )


@dataclass(slots=True)
class Buses:
    """What carries a node's changes to the others (and back)."""

    node_id: str
    frames: FrameBus
    rooms: Broadcaster | None  # None: one node, nothing to tell

    async def start(self) -> None:
        await self.frames.start()
        if self.rooms is not None:
            await self.rooms.start()

    async def close(self) -> None:
        if self.rooms is not None:
            await self.rooms.close()
        await self.frames.close()

    def health(self) -> str | None:
        """``None`` while every bus is connected; else why not."""
        problems = [p for p in (self.frames.health(), self.rooms and self.rooms.health()) if p]
        return "; ".join(problems) if problems else None


def open_buses(settings: Settings, store: Store, node_id: str) -> Buses:
    async def read_since(org: str, since: int) -> list[Frame]:
        return await store.frames_since(org, since, limit=GAP_READ_LIMIT)

    if settings.redis_url:
        from rooms.redis_broadcaster import RedisBroadcaster
        from rooms.redis_frame_bus import RedisFrameBus

        return Buses(
            node_id,
            RedisFrameBus(settings.redis_url, node_id, read_since, prefix=settings.redis_prefix),
            RedisBroadcaster(settings.redis_url, node_id, prefix=settings.redis_prefix),
        )
    pooled = bool(settings.database_url)
    return Buses(node_id, LocalFrameBus(read_since if pooled else None), None)
