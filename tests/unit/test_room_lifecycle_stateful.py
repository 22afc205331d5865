"""The room lifecycle in random order, against the real feed, rooms and SQLite store.

Hypothesis drives joins, leaves, edits (from editors and as mutations), deletes,
loads, unloads and compactions, some of them two at a time, and checks after every
step that a doc has one room, every open editor is in it, and what the store holds
(and the room, when loaded) is exactly the merged state of the acknowledged edits
since the doc's last deletion.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pycrdt import Map

from crdt_sync.docnames import split_record
from crdt_sync.mutations import Mutation, MutationError
from rooms.close_codes import CloseCode
from rooms.connection import Connection
from rooms.room import Origin, Room, RoomState

from .live_node import ORG, WAIT, Node, fields_update, live_node, stored_fields

DOCS = ("task/1", "task/2", "note")
RECORDS = tuple(d for d in DOCS if split_record(d) is not None)
KEYS = ("a", "b", "c")

docs = st.sampled_from(DOCS)
records = st.sampled_from(RECORDS)
keys = st.sampled_from(KEYS)
picks = st.integers(min_value=0, max_value=7)


@dataclass
class Editor:
    conn: Connection
    doc: str
    room: Room


class RoomLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._node_cm = self.portal.wrap_async_context_manager(live_node(self.tmp))
        self.node: Node = self._node_cm.__enter__()
        self.model: dict[str, dict[str, int]] = {doc: {} for doc in DOCS}
        self.editors: list[Editor] = []
        self.counter = 0

    def teardown(self) -> None:
        try:
            self.run(self._unload_everything)
            for doc in RECORDS:  # every pending change framed: projections match too
                record = self.run(self.node.store.get_record, ORG, *doc.split("/"))
                assert (record.fields if record is not None else {}) == self.model[doc], doc
        finally:
            try:
                self._node_cm.__exit__(None, None, None)
            finally:
                self._portal_cm.__exit__(None, None, None)
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------

    def run(self, func: Any, *args: Any) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(WAIT):
                return await func(*args)

        return self.portal.call(bounded)

    def run_sync(self, func: Any, *args: Any) -> Any:
        return self.portal.call(func, *args)

    def value(self) -> int:
        self.counter += 1
        return self.counter

    def pick(self, index: int) -> Editor:
        return self.editors[index % len(self.editors)]

    def forget_closed(self) -> None:
        """Editors of a deleted doc were closed with 4404: they are gone."""
        for editor in [e for e in self.editors if e.conn.closing]:
            assert editor.conn.close_code == CloseCode.NOT_FOUND, editor.conn.close_code
            self.editors.remove(editor)
            self.run_sync(self.node.manager.leave, editor.room, editor.conn)

    async def _join(self, doc: str) -> Editor:
        conn = self.node.connection()
        room = await self.node.manager.join(ORG, doc, conn)
        return Editor(conn, doc, room)

    async def _edit(self, editor: Editor, key: str, value: int) -> None:
        """As a Yjs editor: an update message on its connection."""
        update = fields_update(editor.room, **{key: value})
        await editor.room.on_update(editor.conn, update, None)

    async def _delete(self, doc: str) -> int | bool | None:
        if doc in RECORDS:
            return await self.node.feed.mutations.delete(ORG, doc, actor="carol")
        return await self.node.manager.delete(ORG, doc)

    async def _http_edit(self, doc: str, key: str, value: int) -> None:
        """As ``POST /docs/{doc}/update``: durable before it is acknowledged."""
        manager = self.node.manager
        room = await manager.get_room(ORG, doc)
        try:
            appended = await room.apply_update(
                fields_update(room, **{key: value}), actor="http", origin=Origin.HTTP
            )
            assert appended is not None
            await appended.durable
            manager.after_update(room)
        finally:
            manager.release(room)

    async def _mutate(self, doc: str, key: str, value: int) -> Any:
        t, id_ = doc.split("/")
        op = "u" if self.model[doc] else "i"
        outcomes = await self.node.feed.mutations.mutate_many(
            ORG, [Mutation(t, id_, op, {key: value})], actor="mia", client_id=None
        )
        return outcomes[0]

    async def _unload(self, doc: str) -> None:
        room = self.node.manager.rooms.get((ORG, doc))
        if room is not None:
            await self.node.manager.unload(room)

    async def _compact(self, doc: str) -> None:
        room = self.node.manager.rooms.get((ORG, doc))
        if room is not None and room.state is RoomState.LOADED:
            await room.compact()

    async def _load(self, doc: str) -> None:
        room = await self.node.manager.get_room(ORG, doc)
        self.node.manager.release(room)

    async def _both(self, first: Any, second: Any) -> list[Any]:
        results: list[Any] = [None, None]

        async def one(i: int, call: Any) -> None:
            results[i] = await call[0](*call[1:])

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0, first)
            tg.start_soon(one, 1, second)
        return results

    async def _unload_everything(self) -> None:
        for editor in self.editors:
            self.node.manager.leave(editor.room, editor.conn)
        self.editors.clear()
        for room in list(self.node.manager.rooms.values()):
            assert await self.node.manager.unload(room), room

    # -- rules ---------------------------------------------------------------------------

    @rule(doc=docs)
    def join(self, doc: str) -> None:
        self.editors.append(self.run(self._join, doc))

    @rule(index=picks)
    def leave(self, index: int) -> None:
        if not self.editors:  # not a precondition: which joins survived a race may vary
            return
        editor = self.pick(index)
        self.editors.remove(editor)
        self.run_sync(self.node.manager.leave, editor.room, editor.conn)

    @rule(index=picks, key=keys)
    def edit(self, index: int, key: str) -> None:
        if not self.editors:
            return
        editor, value = self.pick(index), self.value()
        self.run(self._edit, editor, key, value)
        self.model[editor.doc][key] = value

    @rule(doc=docs, key=keys)
    def http_edit(self, doc: str, key: str) -> None:
        value = self.value()
        self.run(self._http_edit, doc, key, value)
        self.model[doc][key] = value

    @rule(doc=records, key=keys)
    def mutate(self, doc: str, key: str) -> None:
        value = self.value()
        result = self.run(self._mutate, doc, key, value)
        assert isinstance(result, dict), result
        assert result["status"] == (200 if self.model[doc] else 201)
        self.model[doc][key] = value

    @rule(doc=docs)
    def delete(self, doc: str) -> None:
        existed = self.run(self._delete, doc)
        assert bool(existed) == bool(self.model[doc]), (doc, existed)
        self.model[doc] = {}
        self.forget_closed()

    @rule(doc=docs)
    def load(self, doc: str) -> None:
        self.run(self._load, doc)

    @rule(doc=docs)
    def unload(self, doc: str) -> None:
        self.run(self._unload, doc)

    @rule(doc=docs)
    def compact(self, doc: str) -> None:
        self.run(self._compact, doc)

    # -- two at once ---------------------------------------------------------------------

    @rule(doc=docs)
    def join_while_deleting(self, doc: str) -> None:
        editor, _ = self.run(self._both, (self._join, doc), (self._delete, doc))
        self.editors.append(editor)
        self.model[doc] = {}
        self.forget_closed()

    @rule(doc=docs)
    def load_while_deleting(self, doc: str) -> None:
        self.run(self._both, (self._delete, doc), (self._load, doc))
        self.model[doc] = {}
        self.forget_closed()

    @rule(doc=docs, key=keys)
    def http_edit_while_unloading(self, doc: str, key: str) -> None:
        value = self.value()
        self.run(self._both, (self._unload, doc), (self._http_edit, doc, key, value))
        self.model[doc][key] = value

    @rule(doc=docs, key=keys)
    def http_edit_while_compacting(self, doc: str, key: str) -> None:
        value = self.value()
        self.run(self._both, (self._compact, doc), (self._http_edit, doc, key, value))
        self.model[doc][key] = value

    @rule(doc=docs)
    def compact_while_unloading(self, doc: str) -> None:
        self.run(self._both, (self._compact, doc), (self._unload, doc))

    @rule(doc=records, key=keys)
    def mutate_while_deleting(self, doc: str, key: str) -> None:
        """Which came first is read from the sids: the model follows that order."""
        value = self.value()
        result, deleted = self.run(self._both, (self._mutate, doc, key, value), (self._delete, doc))
        if isinstance(result, dict):
            assert result["sid"] is not None, result
            if deleted is None or result["sid"] > deleted:
                self.model[doc] = ({} if deleted is not None else self.model[doc]) | {key: value}
            else:
                self.model[doc] = {}
        else:
            assert isinstance(result, MutationError), repr(result)
            assert result.status in (404, 409), result.detail
            if deleted is not None:
                self.model[doc] = {}
        self.forget_closed()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def one_room_per_doc_with_every_open_editor(self) -> None:
        self.run(self._check_rooms)

    async def _check_rooms(self) -> None:
        manager = self.node.manager
        for (org, name), room in manager.rooms.items():
            assert (org, name) == (room.org, room.name)
            assert room.state is RoomState.LOADED, room
            assert room.holds == 0, room
        for editor in self.editors:
            assert not editor.conn.closing, editor.conn.close_code
            room = manager.rooms.get((ORG, editor.doc))
            assert room is editor.room, f"{editor.doc}: editor in {editor.room}, doc in {room}"
            assert editor.conn.id in room.connections
        assert not manager._deleting and not self.node.feed.mutations._in_flight

    @invariant()
    def stored_state_is_the_merged_acknowledged_edits(self) -> None:
        self.run(self._check_stored)

    async def _check_stored(self) -> None:
        await self.node.store.flush()
        for doc in DOCS:
            stored = await self.node.store.load(ORG, doc)
            assert stored_fields(stored) == self.model[doc], doc
            room = self.node.manager.rooms.get((ORG, doc))
            if room is not None:
                assert room.doc.get("fields", type=Map).to_py() == self.model[doc], doc


RoomLifecycle.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRoomLifecycle = RoomLifecycle.TestCase
