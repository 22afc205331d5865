"""Mutations racing each other and deletes, each interleaving forced with paused store calls.

Every test drives the real feed, room manager and SQLite store (``live_node``); the
pauses only decide which request runs when.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from crdt_sync.mutations import Mutation, MutationError
from rooms.room import Origin

from .live_node import ORG, WAIT, Node, fields_update, live_node

pytestmark = pytest.mark.anyio


async def mutate(node: Node, *mutations: Mutation, actor: str = "bob") -> list[Any]:
    return await node.feed.mutations.mutate_many(ORG, list(mutations), actor=actor, client_id=None)


def ok(outcome: Any) -> dict[str, Any]:
    assert isinstance(outcome, dict), f"expected a result, got {outcome!r}"
    return outcome


async def test_crossed_idempotency_keys_do_not_deadlock(tmp_path: Path) -> None:
    """[A, B] and [B, A] at once: each holds its first key when it reaches the second."""
    a = Mutation("task", "a", "i", {"title": "A"}, client_tx_id="tx-A")
    b = Mutation("task", "b", "i", {"title": "B"}, client_tx_id="tx-B")
    async with live_node(tmp_path) as node:
        first_a = node.store.pause("get_mutation", lambda org, tx: tx == "tx-A")
        first_b = node.store.pause("get_mutation", lambda org, tx: tx == "tx-B")
        results: dict[str, list[Any]] = {}

        async def request(name: str, *batch: Mutation) -> None:
            results[name] = await mutate(node, *batch)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(request, "ab", a, b)
                tg.start_soon(request, "ba", b, a)
                await first_a.wait_reached()  # "ab" holds tx-A
                await first_b.wait_reached()  # "ba" holds tx-B
                first_a.go()
                first_b.go()
            later = await mutate(node, a, b)  # a later request naming both answers too

        ab, ba = [ok(x) for x in results["ab"]], [ok(x) for x in results["ba"]]
        assert (ab[0]["status"], ba[0]["status"]) == (201, 201)
        assert ab[1] == {**ba[0], "replayed": True} and ba[1] == {**ab[0], "replayed": True}
        assert [ok(x)["sid"] for x in later] == [ab[0]["sid"], ba[0]["sid"]]
        assert all(ok(x)["replayed"] for x in later)
        assert not node.feed.mutations._in_flight, "no key is left held"
        assert all(room.holds == 0 for room in node.manager.rooms.values())


async def test_concurrent_inserts_one_wins(tmp_path: Path) -> None:
    """Two inserts of one (t, id) both wait (for base_sid's frames) after the room loaded."""
    async with live_node(tmp_path) as node:
        pauses = [node.store.pause("record_writers") for _ in range(2)]
        results: list[Any] = []

        async def insert(title: str) -> None:
            insert = Mutation("task", "x", "i", {"title": title}, base_sid=0)
            results.extend(await mutate(node, insert))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(insert, "first")
                tg.start_soon(insert, "second")
                for pause in pauses:
                    await pause.wait_reached()  # both past the load, neither has written
                for pause in pauses:
                    pause.go()

        won = [r for r in results if isinstance(r, dict)]
        lost = [r for r in results if isinstance(r, MutationError)]
        assert len(won) == 1 and won[0]["status"] == 201, results
        assert len(lost) == 1 and (lost[0].status, lost[0].error) == (409, "exists"), results
        record = await node.store.get_record(ORG, "task", "x")
        assert record is not None and record.sid == won[0]["sid"]
        frames = (await node.store.read_frames(ORG, 0)).frames
        assert [(f.op, f.p) for f in frames] == [("i", {"title": record.fields["title"]})]


async def test_delete_racing_a_batch_gives_per_mutation_results(tmp_path: Path) -> None:
    """The record of a batch's second mutation is deleted while that mutation waits."""
    async with live_node(tmp_path) as node:
        made = await mutate(
            node,
            Mutation("task", "a", "i", {"n": 1}),
            Mutation("task", "b", "i", {"n": 1}),
        )
        assert [ok(r)["status"] for r in made] == [201, 201]
        paused = node.store.pause("record_writers", lambda org, t, id, since: id == "b")
        batch = [
            Mutation("task", "a", "u", {"n": 2}),
            Mutation("task", "b", "u", {"n": 2}, base_sid=0),
            Mutation("task", "c", "i", {"n": 2}),
        ]
        outcomes: list[Any] = []

        async def run_batch() -> None:
            outcomes.extend(await mutate(node, *batch))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_batch)
                await paused.wait_reached()  # "a" is applied, "b" waits
                deleted = await node.feed.mutations.delete(ORG, "task/b", actor="carol")
                paused.go()

        assert deleted is not None
        assert ok(outcomes[0])["status"] == 200
        assert isinstance(outcomes[1], MutationError), outcomes[1]
        assert (outcomes[1].status, outcomes[1].error) == (404, "not_found")
        assert ok(outcomes[2])["status"] == 201
        assert await node.store.get_record(ORG, "task", "b") is None
        assert await node.store.load(ORG, "task/b") is None, "no update after the delete"
        assert all(room.holds == 0 for room in node.manager.rooms.values())


async def test_insert_after_a_racing_delete_starts_on_the_deleted_doc(tmp_path: Path) -> None:
    """An insert that waited while its record was deleted is applied after the delete."""
    async with live_node(tmp_path) as node:
        assert ok((await mutate(node, Mutation("task", "r", "i", {"n": 1})))[0])["status"] == 201
        paused = node.store.pause("record_writers")
        outcomes: list[Any] = []

        async def reinsert() -> None:
            outcomes.extend(await mutate(node, Mutation("task", "r", "u", {"n": 2}, None, 0)))
            outcomes.extend(await mutate(node, Mutation("task", "r", "i", {"n": 3})))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reinsert)
                await paused.wait_reached()
                await node.feed.mutations.delete(ORG, "task/r", actor="carol")
                paused.go()
        assert isinstance(outcomes[0], MutationError) and outcomes[0].status == 404
        assert ok(outcomes[1])["status"] == 201
        record = await node.store.get_record(ORG, "task", "r")
        assert record is not None and record.fields == {"n": 3}
        frames = (await node.store.read_frames(ORG, 0)).frames
        assert [f.op for f in frames] == ["i", "d", "i"]


async def test_replayed_no_op_mutation_returns_its_own_sid(tmp_path: Path) -> None:
    """A no-op mutation while another writer's change is pending: its key must not
    remember the other writer's frame."""
    async with live_node(tmp_path) as node:
        made = ok((await mutate(node, Mutation("task", "n", "i", {"title": "x"})))[0])
        room = node.manager.rooms[(ORG, "task/n")]
        no_op = Mutation("task", "n", "u", {"title": "x"}, client_tx_id="tx-noop", base_sid=0)
        paused = node.store.pause("record_writers")
        outcomes: list[Any] = []

        async def run_no_op() -> None:
            outcomes.extend(await mutate(node, no_op))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_no_op)
                await paused.wait_reached()  # alice edits while the mutation reads frames
                update = fields_update(room, status="open")
                await room.apply_update(update, actor="alice", origin=Origin.HTTP)
                paused.go()
        first = ok(outcomes[0])
        replay = ok((await mutate(node, no_op))[0])

        frames = (await node.store.read_frames(ORG, 0)).frames
        alice = [f for f in frames if f.who == "alice"]
        assert [f.p for f in alice] == [{"status": "open"}], "alice's change is framed as hers"
        assert first["sid"] is None, "nothing of this mutation was framed"
        assert replay["replayed"] and replay["sid"] == first["sid"]
        assert made["sid"] != alice[0].sid


async def test_new_change_is_credited_to_its_own_actor(tmp_path: Path) -> None:
    """Bob edits inside the coalescing window of Alice's pending change."""
    async with live_node(tmp_path) as node:
        assert ok((await mutate(node, Mutation("task", "w", "i", {"title": "t"})))[0])["sid"]
        room = node.manager.rooms[(ORG, "task/w")]
        await room.apply_update(fields_update(room, title="A"), actor="alice", origin=Origin.HTTP)
        await room.apply_update(fields_update(room, status="B"), actor="bob", origin=Origin.HTTP)
        conn = node.connection(actor="carol")
        room.join(conn)
        await room.on_update(conn, fields_update(room, size=3), None)
        room.leave(conn)
        with anyio.fail_after(WAIT):
            assert await node.manager.unload(room)  # frames what is pending

        frames = (await node.store.read_frames(ORG, 0)).frames
        assert [(f.who, f.p) for f in frames[1:]] == [
            ("alice", {"title": "A"}),
            ("bob", {"status": "B"}),
            ("carol", {"size": 3}),
        ]


async def test_base_sid_conflict_includes_a_concurrent_uncommitted_write(tmp_path: Path) -> None:
    """Alice's update is queued but not committed when Bob's (with ``base_sid``) reads
    the record's frames: Bob must still be told he overwrote Alice's field."""
    async with live_node(tmp_path) as node:
        made = ok((await mutate(node, Mutation("task", "c", "i", {"title": "t"})))[0])
        release = threading.Event()
        outcomes: dict[str, Any] = {}

        async def update(actor: str, title: str, base_sid: int | None) -> None:
            m = Mutation("task", "c", "u", {"title": title}, base_sid=base_sid)
            [outcomes[actor]] = await mutate(node, m, actor=actor)

        bob_queued = node.store.notice("append", lambda org, name, actor: actor == "bob")
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                await tg.start(node.store.hold_writer, release)  # no commit for now
                alice_queued = node.store.notice("append", lambda o, n, actor: actor == "alice")
                tg.start_soon(update, "alice", "A", None)
                await alice_queued.wait()
                tg.start_soon(update, "bob", "B", made["sid"])
                await bob_queued.wait()  # bob read the frames (alice's not among them)
                release.set()

        alice, bob = ok(outcomes["alice"]), ok(outcomes["bob"])
        assert bob["conflicts"] == ["title"]
        assert bob["overwritten"]["title"]["value"] == "A"
        assert bob["overwritten"]["title"]["who"] == "alice"
        assert alice["sid"] < bob["sid"]
