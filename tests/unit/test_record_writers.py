"""``base_sid`` conflict checks read who wrote which field from the frame index, not by
decoding every frame of the record since ``base_sid``."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persistence.sqlite import SQLiteStore
from persistence.sqlite import reads as sqlite_reads
from persistence.store import FrameBatch, FrameDraft

pytestmark = pytest.mark.anyio

ORG = "default"
WRITERS = [("alice", None), ("alice", "tab-2"), ("bob", None)]
FIELDS = ["a", "b", "c", "d e"]


def expected(frames, since: int, fields: list[str], exclude) -> dict:
    """What the old code computed from decoded frames: the newest touching frame."""
    found: dict = {}
    for f in frames:
        if f.sid <= since or (f.who, f.ctx.get("client_id")) == exclude:
            continue
        if f.op == "d":
            found[None] = (f.who, f.sid)
        for name in fields:
            if name in f.p:
                found[name] = (f.who, f.sid)
    return found


async def log(store: SQLiteStore, record: str, op: str, p: dict, writer) -> None:
    who, client_id = writer
    ctx = {"client_tx_id": None} | ({"client_id": client_id} if client_id else {})
    draft = FrameDraft("task", record, op, p, who, 1, ctx, None if op == "d" else {})
    await store.log_frames(ORG, FrameBatch((draft,), None))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), since_at=st.floats(0, 1))
def test_record_writers_agree_with_decoding_every_frame(tmp_path_factory, seed, since_at) -> None:
    import anyio

    rng = random.Random(seed)
    path = tmp_path_factory.mktemp("rw") / "db"

    async def run() -> None:
        async with SQLiteStore(path, commit_interval_ms=0) as store:
            for _ in range(rng.randint(1, 40)):
                record = rng.choice(["1", "2"])
                op = rng.choice(["u", "u", "u", "i", "d"])
                p = {} if op == "d" else {k: rng.random() for k in rng.sample(FIELDS, 2)}
                await log(store, record, op, p, rng.choice(WRITERS))
            frames = await store.record_frames(ORG, "task", "1", 0)
            newest = frames[-1].sid if frames else 0
            since = int(newest * since_at)
            for exclude in WRITERS:
                rows = await store.record_writers(
                    ORG, "task", "1", since, FIELDS[:3], exclude=exclude
                )
                got = {field: (who, sid) for field, who, sid in rows}
                assert got == expected(frames, since, FIELDS[:3], exclude)

    anyio.run(run, backend="asyncio")


async def test_record_writers_query_is_answered_from_the_record_index(tmp_path) -> None:
    async with SQLiteStore(tmp_path / "db") as store:
        await log(store, "1", "u", {"a": 1}, WRITERS[0])

        def plans(conn) -> list[str]:
            seen: list[str] = []
            real = conn.execute

            class Explaining:
                def execute(self, sql: str, params=()):
                    if sql.startswith("SELECT"):
                        seen.extend(row[3] for row in real("EXPLAIN QUERY PLAN " + sql, params))
                    return real(sql, params)

            sqlite_reads.record_writers(Explaining(), ORG, "task", "1", 0, ["a"], ("x", None))
            return seen

        seen = await store.run_in_writer(plans)
        frame_scans = [step for step in seen if " f " in f" {step} " or "frames" in step]
        assert frame_scans and all("idx_frames_record" in step for step in frame_scans), seen
