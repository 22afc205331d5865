"""One node's rooms and frame feed on the real SQLite store, wired as the app wires them,
without HTTP: for tests that force an interleaving of loads, edits, mutations,
compactions, unloads and deletes.

:class:`PausingStore` *is* the SQLite store; a test can stop one call of a method at a
chosen point until it says go (an ``anyio.Event``), or hold the writer thread between
two transactions (a commit slower than anything else).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pycrdt import Doc, Map

from crdt_sync.record_feed import RecordFeed
from persistence.sqlite import SQLiteStore
from persistence.store import Appended, RecordRow, StoredDoc
from rooms.connection import Connection
from rooms.feed_hub import FeedHub
from rooms.frame_bus import LocalFrameBus
from rooms.manager import RoomManager, RoomSettings
from rooms.room import Room

ORG = "default"
WAIT = 5.0


class Pause:
    """One paused store call: ``reached`` once it stops, it goes on after :meth:`go`."""

    def __init__(self) -> None:
        self.reached = anyio.Event()
        self._go = anyio.Event()

    async def wait_reached(self) -> None:
        with anyio.fail_after(WAIT):
            await self.reached.wait()

    def go(self) -> None:
        self._go.set()

    async def hold(self) -> None:
        self.reached.set()
        with anyio.fail_after(WAIT):
            await self._go.wait()


class PausingStore(SQLiteStore):
    """The SQLite store, whose reads and compactions a test can stop at a chosen point."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self._pauses: dict[str, list[tuple[Callable[..., bool], Pause]]] = {}
        self._notices: dict[str, list[tuple[Callable[..., bool], anyio.Event]]] = {}

    def pause(self, method: str, when: Callable[..., bool] = lambda *args: True) -> Pause:
        """Stop the next call of ``method`` whose arguments satisfy ``when``."""
        pause = Pause()
        self._pauses.setdefault(method, []).append((when, pause))
        return pause

    def notice(self, method: str, when: Callable[..., bool] = lambda *args: True) -> anyio.Event:
        """An event set once a call of ``method`` whose arguments satisfy ``when`` is made
        (for :meth:`append`: once the update is queued)."""
        event = anyio.Event()
        self._notices.setdefault(method, []).append((when, event))
        return event

    def _notify(self, method: str, *args: Any) -> None:
        for when, event in self._notices.get(method, []):
            if when(*args):
                event.set()

    async def append(self, org: str, name: str, update: bytes, **kwargs: Any) -> Appended:
        appended = await super().append(org, name, update, **kwargs)
        self._notify("append", org, name, kwargs.get("actor"))
        return appended

    async def _maybe_hold(self, method: str, *args: Any) -> None:
        waiting = self._pauses.get(method, [])
        for entry in waiting:
            when, pause = entry
            if when(*args):
                waiting.remove(entry)
                await pause.hold()
                return

    async def load(self, org: str, name: str) -> StoredDoc | None:
        stored = await super().load(org, name)
        await self._maybe_hold("load", org, name)  # read, not yet handed to the room
        return stored

    async def get_record(self, org: str, t: str, id: str) -> RecordRow | None:
        await self._maybe_hold("get_record", org, t, id)
        return await super().get_record(org, t, id)

    async def get_mutation(self, org: str, client_tx_id: str) -> dict[str, Any] | None:
        await self._maybe_hold("get_mutation", org, client_tx_id)
        return await super().get_mutation(org, client_tx_id)

    async def record_writers(
        self, org: str, t: str, id: str, since: int, fields: list[str], **kwargs: Any
    ) -> list[Any]:
        await self._maybe_hold("record_writers", org, t, id, since)
        return await super().record_writers(org, t, id, since, fields, **kwargs)

    async def compact(self, org: str, name: str, state: bytes) -> None:
        await self._maybe_hold("compact", org, name)
        await super().compact(org, name, state)

    async def hold_writer(
        self, release: threading.Event, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the writer thread busy between two transactions until ``release`` is set:
        everything queued meanwhile stays uncommitted (a very slow commit)."""
        holding = threading.Event()

        def hold(conn: Any) -> None:
            holding.set()
            release.wait(WAIT)

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run_in_writer, hold)
            assert await anyio.to_thread.run_sync(holding.wait, WAIT), "writer not reached"
            task_status.started()


class RecordingTransport:
    """Where a test connection's messages go (as a WebSocket would take them)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, message: bytes) -> None:
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@dataclass
class Node:
    store: PausingStore
    manager: RoomManager
    feed: RecordFeed
    hub: FeedHub  # subscribed to the feed's frame bus, as the app wires it

    def connection(self, actor: str = "anonymous") -> Connection:
        return Connection(RecordingTransport(), actor=actor)


@asynccontextmanager
async def live_node(
    tmp_path: Path,
    *,
    coalesce_ms: float = 10_000,
    idle_seconds: float = 60.0,
    **store_options: Any,
) -> AsyncIterator[Node]:
    """Store, room manager and feed as the app runs them; everything unloaded on exit.
    ``store_options`` go to the SQLite store (``max_batch=1``: a commit per write)."""
    store = PausingStore(tmp_path / "node.db", **store_options)
    await store.start()
    try:
        hub, bus = FeedHub(), LocalFrameBus()
        bus.subscribe(hub.publish)
        feed = RecordFeed(store, bus, coalesce_ms=coalesce_ms)
        settings = RoomSettings(idle_seconds=idle_seconds)
        async with RoomManager(store, settings, listener=feed) as manager:
            async with anyio.create_task_group() as tg:
                await tg.start(feed.run, manager)
                yield Node(store, manager, feed, hub)
                with anyio.fail_after(WAIT):
                    await manager.unload_all()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


def fields_update(room: Room, **values: Any) -> bytes:
    """An update that sets entries of the ``fields`` map, made on a replica of ``room``
    (so it follows everything the room holds, as a connected editor's would)."""
    replica = Doc()
    replica.apply_update(room.doc.get_update())
    before = replica.get_state()
    fields = replica.get("fields", type=Map)
    for key, value in values.items():
        fields[key] = value
    return replica.get_update(before)


def stored_fields(stored: StoredDoc | None) -> dict[str, Any]:
    """The ``fields`` map of a doc rebuilt from what the store holds."""
    doc = Doc()
    if stored is not None:
        if stored.snapshot:
            doc.apply_update(stored.snapshot)
        for update in stored.updates:
            doc.apply_update(update)
    return doc.get("fields", type=Map).to_py()
