"""The webhook outbox and deliveries of the store contract (persistence/outbox.py), on
every backend: outbox rows written with the frames, claims with leases, sid order per
endpoint and org, retries, parking, replay, the throttle window and cleanup."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from sqlite_utils import Database

from persistence.outbox import EndpointSpec, frame_json
from persistence.sqlite import SQLiteStore
from persistence.sqlite.schema import MIGRATIONS
from persistence.store import FrameBatch, Store
from tests.frame_drafts import frame_draft
from tests.store_backends import PostgresDatabases, open_store

pytestmark = pytest.mark.anyio

ORG = "acme"
OTHER = "globex"
ALL = EndpointSpec("wh_all")
CARDS = EndpointSpec("wh_cards", frozenset({"card"}))
CLAIM = {"lease_ms": 60_000, "max_batch": 100, "throttle_ms": 0}


@pytest.fixture
async def store(
    backend: tuple[str, PostgresDatabases | None], tmp_path: Path
) -> AsyncIterator[Store]:
    name, databases = backend
    async with open_store(name, tmp_path, databases, outbox=True) as s:
        with anyio.fail_after(20):
            yield s


async def log(store: Store, org: str, *items: tuple[str, str]) -> list[int]:
    """Log one frame per ``(t, id)`` (an insert); return their sids."""
    batch = FrameBatch(
        tuple(
            frame_draft(t, id, "i", {"n": i}, who="ann", at=1000 + i)
            for i, (t, id) in enumerate(items)
        )
    )
    return [f.sid for f in await store.log_frames(org, batch)]


async def test_a_claim_carries_the_frames_logged_and_keeps_its_range(store: Store) -> None:
    sids = await log(store, ORG, ("card", "a"), ("card", "b"))
    sid3 = await store.append_frame(
        ORG, t="column", id="c", op="i", p={"x": 1}, who="bob", at=5, ctx={}
    )
    d = await store.claim_delivery(ALL, owner="n1", **CLAIM)
    assert d is not None
    assert (d.org, d.first_sid, d.last_sid, d.attempts) == (ORG, sids[0], sid3, 0)
    assert [(f.sid, f.t, f.id, f.p) for f in d.frames] == [
        (sids[0], "card", "a", {"n": 0}),
        (sids[1], "card", "b", {"n": 1}),
        (sid3, "column", "c", {"x": 1}),
    ]
    assert d.webhook_id == f"wh_all:{ORG}:{sids[0]}-{sid3}"
    # Leased: nobody else gets it, and no later batch of the org goes meanwhile.
    await log(store, ORG, ("card", "z"))
    assert await store.claim_delivery(ALL, owner="n2", **CLAIM) is None
    # A retry keeps the range (and so the webhook-id).
    assert await store.finish_delivery(
        d.id, owner="n1", outcome="retry", next_attempt_at=0, error="HTTP 500", status=500
    )
    again = await store.claim_delivery(ALL, owner="n2", **CLAIM)
    assert again is not None and again.webhook_id == d.webhook_id and again.attempts == 1
    assert again.first_attempt_at == d.first_attempt_at
    # The first owner lost it: its report does not count.
    assert not await store.finish_delivery(d.id, owner="n1", outcome="retry", next_attempt_at=0)
    assert await store.finish_delivery(again.id, owner="n2", outcome="ok", endpoints=["wh_all"])
    nxt = await store.claim_delivery(ALL, owner="n2", **CLAIM)
    assert nxt is not None and nxt.first_sid == sid3 + 1 and [f.id for f in nxt.frames] == ["z"]


async def test_an_expired_lease_is_taken_over_with_the_same_range(store: Store) -> None:
    await log(store, ORG, ("card", "a"))
    d = await store.claim_delivery(ALL, owner="dead", lease_ms=1, max_batch=10, throttle_ms=0)
    assert d is not None
    with anyio.fail_after(5):
        while (taken := await store.claim_delivery(ALL, owner="n2", **CLAIM)) is None:
            await anyio.sleep(0.01)
    assert taken.webhook_id == d.webhook_id and taken.id == d.id


async def test_type_filter_batches_and_orgs(store: Store) -> None:
    await log(store, ORG, ("column", "x"), ("card", "a"), ("column", "y"))
    await log(store, OTHER, ("card", "b"))
    seen = []
    for _ in range(2):
        d = await store.claim_delivery(CARDS, owner="n1", **CLAIM)
        assert d is not None
        seen.append((d.org, [f.id for f in d.frames]))
        assert all(f.t == "card" for f in d.frames)
        await store.finish_delivery(d.id, owner="n1", outcome="ok", endpoints=["wh_cards"])
    assert sorted(seen) == [(ORG, ["a"]), (OTHER, ["b"])]
    assert await store.claim_delivery(CARDS, owner="n1", **CLAIM) is None
    # Only columns after the cursor: nothing to send, the cursor moves past them.
    await log(store, ORG, ("column", "z"))
    assert await store.claim_delivery(CARDS, owner="n1", **CLAIM) is None
    status = await store.webhook_status(["wh_cards"])
    assert status.cursors[("wh_cards", ORG)][1] == 0  # no backlog left


async def test_max_batch_splits_in_sid_order(store: Store) -> None:
    sids = await log(store, ORG, *[("card", str(i)) for i in range(5)])
    got = []
    while (
        d := await store.claim_delivery(ALL, owner="n", lease_ms=60_000, max_batch=2, throttle_ms=0)
    ) is not None:
        got.append([f.sid for f in d.frames])
        await store.finish_delivery(d.id, owner="n", outcome="ok", endpoints=["wh_all"])
    assert got == [sids[0:2], sids[2:4], sids[4:5]]


WINDOW = {"lease_ms": 60_000, "max_batch": 10, "throttle_ms": 60_000}


BOTH = [ALL.id, CARDS.id]
CHANGES = itertools.count()


async def change(store: Store, org: str, *records: tuple[str, str]) -> None:
    """Log a change of each record, one transaction each (a record changes at most
    once per transaction, and a change must change something to be logged)."""
    for t, id in records:
        draft = frame_draft(t, id, "u", {"n": next(CHANGES)}, who="ann", at=1000)
        await store.log_frames(org, FrameBatch((draft,)))


async def deliver(store: Store, endpoint: EndpointSpec = ALL, **claim: int) -> list[str] | None:
    """Claim the endpoint's next batch and report it delivered: its frames' record ids
    (``None``: nothing was due)."""
    d = await store.claim_delivery(endpoint, owner="n", **{**WINDOW, **claim})
    if d is None:
        return None
    assert await store.finish_delivery(d.id, owner="n", outcome="ok", endpoints=BOTH)
    return [f.id for f in d.frames]


async def test_the_throttle_is_per_record(store: Store) -> None:
    # A record's first change goes at once, window or not.
    await change(store, ORG, ("card", "a"))
    assert await deliver(store) == ["a"]
    # Its next changes wait for its window (a typing user: one POST per window) ...
    await change(store, ORG, ("card", "a"), ("card", "a"))
    assert await deliver(store) is None
    # ... but a change to another record does not: it goes at once, and the frames
    # before it in the org's order ride along (a batch is a whole sid range).
    await change(store, ORG, ("card", "b"))
    assert await deliver(store) == ["a", "a", "b"]
    # Now both were sent within the window: both wait.
    await change(store, ORG, ("card", "b"), ("card", "a"))
    assert await deliver(store) is None
    # A record of the same id but another type is another record.
    await change(store, ORG, ("column", "a"))
    assert await deliver(store) == ["b", "a", "a"]
    # Once the window has passed, what waited goes.
    await change(store, ORG, ("card", "a"))
    assert await deliver(store) is None
    assert await deliver(store, throttle_ms=0) == ["a"]


async def test_the_throttle_is_per_endpoint_and_org(store: Store) -> None:
    await change(store, ORG, ("card", "a"))
    assert await deliver(store) == ["a"]
    assert await deliver(store, CARDS) == ["a"]  # another endpoint has its own window
    await change(store, ORG, ("card", "a"))
    await change(store, OTHER, ("card", "a"))  # another org's record of the same name
    d = await store.claim_delivery(ALL, owner="n", **WINDOW)
    assert d is not None and (d.org, [f.id for f in d.frames]) == (OTHER, ["a"])
    assert await store.finish_delivery(d.id, owner="n", outcome="ok", endpoints=BOTH)
    assert await deliver(store) is None
    assert await deliver(store, CARDS) == ["a"]  # OTHER's, new to this endpoint too
    assert await deliver(store, CARDS) is None


async def test_a_full_batch_goes_within_the_window(store: Store) -> None:
    await change(store, ORG, ("card", "a"))
    assert await deliver(store, max_batch=3) == ["a"]
    await change(store, ORG, ("card", "a"), ("card", "a"))
    assert await deliver(store, max_batch=3) is None
    await change(store, ORG, ("card", "a"))
    assert await deliver(store, max_batch=3) == ["a", "a", "a"]


async def test_a_filtered_endpoint_throttles_the_records_it_wants(store: Store) -> None:
    await change(store, ORG, ("card", "a"))
    assert await deliver(store, CARDS) == ["a"]
    # A column it does not want is no reason to send the waiting card.
    await change(store, ORG, ("card", "a"), ("column", "c"))
    assert await deliver(store, CARDS) is None
    await change(store, ORG, ("card", "b"))
    assert await deliver(store, CARDS) == ["a", "b"]


async def test_many_waiting_orgs_do_not_hide_one_that_is_due(store: Store) -> None:
    orgs = [f"org{i:02}" for i in range(60)]
    for org in orgs:
        await change(store, org, ("card", "a"))
        assert await deliver(store) == ["a"]
        await change(store, org, ("card", "a"))  # waits for its window
    await change(store, ORG, ("card", "new"))
    assert await deliver(store) == ["new"]


async def test_the_throttle_forgets_records_once_their_window_passed(tmp_path: Path) -> None:
    async with open_store("sqlite", tmp_path, None, outbox=True) as store:
        await change(store, ORG, ("card", "a"))
        assert await deliver(store) == ["a"]
        await anyio.sleep(0.01)
        await change(store, ORG, ("card", "b"))
        assert await deliver(store, throttle_ms=5) == ["b"]
        with sqlite3.connect(tmp_path / "store.db") as db:
            rows = db.execute("SELECT org, t, rid FROM webhook_throttle").fetchall()
        assert rows == [(ORG, "card", "b")]  # a's row went: it no longer holds anything


async def test_park_moves_on_and_replay_requeues_the_same_batch(store: Store) -> None:
    await log(store, ORG, ("card", "a"))
    d = await store.claim_delivery(ALL, owner="n", **CLAIM)
    assert d is not None
    assert await store.finish_delivery(
        d.id, owner="n", outcome="park", error="HTTP 503", status=503
    )
    await log(store, ORG, ("card", "b"))
    later = await store.claim_delivery(ALL, owner="n", **CLAIM)
    assert later is not None and [f.id for f in later.frames] == ["b"]
    await store.finish_delivery(later.id, owner="n", outcome="ok", endpoints=["wh_all"])
    status = await store.webhook_status(["wh_all"])
    [parked] = status.deliveries
    assert (parked.id, parked.status, parked.attempts, parked.last_status) == (
        d.id,
        "parked",
        1,
        503,
    )
    assert parked.frames == 1  # its frames are kept while outbox cleanup runs
    assert await store.replay_deliveries(d.id, org=OTHER) == 0
    assert await store.replay_deliveries(d.id, org=ORG) == 1
    assert await store.replay_deliveries() == 0
    again = await store.claim_delivery(ALL, owner="n", **CLAIM)
    assert again is not None and again.webhook_id == d.webhook_id
    assert [f.id for f in again.frames] == ["a"] and again.attempts == 0
    await store.finish_delivery(again.id, owner="n", outcome="ok", endpoints=["wh_all"])
    assert (await store.webhook_status(["wh_all"])).deliveries == []


async def test_outbox_rows_go_once_every_endpoint_passed_them(store: Store) -> None:
    await log(store, ORG, ("card", "a"))
    d = await store.claim_delivery(ALL, owner="n", **CLAIM)
    assert d is not None
    await store.finish_delivery(d.id, owner="n", outcome="ok", endpoints=["wh_all", "wh_cards"])
    # wh_cards has not passed it: it still gets it.
    c = await store.claim_delivery(CARDS, owner="n", **CLAIM)
    assert c is not None and [f.id for f in c.frames] == ["a"]
    await store.finish_delivery(c.id, owner="n", outcome="ok", endpoints=["wh_all", "wh_cards"])
    # Gone now: a new endpoint finds nothing of it.
    assert await store.claim_delivery(EndpointSpec("wh_new"), owner="n", **CLAIM) is None


async def test_without_outbox_no_rows(
    tmp_path: Path, backend: tuple[str, PostgresDatabases | None]
) -> None:
    name, databases = backend
    async with open_store(name, tmp_path, databases) as s:
        await log(s, ORG, ("card", "a"))
        assert await s.claim_delivery(ALL, owner="n", **CLAIM) is None
        assert (await s.webhook_status(["wh_all"])).cursors == {}


async def test_a_version_6_outbox_learns_its_record_ids(tmp_path: Path) -> None:
    # Frames waiting in the outbox of a file from before the per-record throttle.
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        db = Database(conn)
        db.execute("BEGIN IMMEDIATE")
        for step in MIGRATIONS[:6]:
            step(db)
        db.create_table("schema_version", {"version": int}, not_null=["version"])
        db.execute("INSERT INTO schema_version (version) VALUES (6)")
        db.execute(
            "INSERT INTO webhook_outbox (org, sid, t, frame, created_at)"
            " VALUES (?, 5, 'card', ?, 1)",
            (ORG, frame_json("a", "i", "{}", None, 1, "{}")),
        )
        db.execute("COMMIT")
    finally:
        conn.close()
    async with SQLiteStore(path, outbox=True) as store:
        with anyio.fail_after(20):
            assert await deliver(store) == ["a"]
            await change(store, ORG, ("card", "a"))  # the same record: it waits
            assert await deliver(store) is None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(7,)]
        assert db.execute("SELECT rid FROM webhook_outbox WHERE sid = 5").fetchall() == [("a",)]
