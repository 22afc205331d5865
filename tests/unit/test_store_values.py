"""The store never holds a frame it cannot read back and encode (issue 10, finding 3),
and its health follows whether it can write."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from crdt_sync.records.wire import encode_json_array, encode_sse
from persistence import SQLiteStore, StoreWriteError
from persistence.store import FrameBatch, FrameDraft
from persistence.values import UnstorableValue

pytestmark = pytest.mark.anyio

TIMEOUT = 5
ORG = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db", commit_interval_ms=0) as store:
        yield store


def draft(id: str, **ctx: object) -> FrameDraft:
    return FrameDraft(
        t="s",
        id=id,
        op="i",
        p={"a": 1},
        who="alice",
        at=1,
        ctx={"client_tx_id": None, **ctx},
        record={"a": 1},
    )


@pytest.mark.parametrize(
    "bad",
    [
        draft("1", client_id="\ud800"),
        draft("1", client_id={"deep": [[[[]]]] * 2, "x": float("nan")}),
        draft("\udfff"),
    ],
)
async def test_unreadable_frame_never_stored(store: SQLiteStore, bad: FrameDraft) -> None:
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(UnstorableValue):
            store.log_frames(ORG, FrameBatch((bad,)))
        assert store.stats().refused_batches == 1
        # The frames around it are stored and every one of them reads back and encodes.
        logged = await store.log_frames(ORG, FrameBatch((draft("2"),)))
        frames = (await store.read_frames(ORG, 0)).frames
        assert frames == logged
        json.loads(encode_json_array(frames))
        encode_sse(frames).decode("utf-8")


async def test_frames_stored_before_strict_storage_read_back_as_valid_text(
    store: SQLiteStore,
) -> None:
    """A database written by an older crdt-sync may hold a lone surrogate, escaped."""

    def old_row(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO frames (org, sid, t, id, op, p, who, at, ctx) "
            "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?)",
            (ORG, "s", "1", "i", '{"a":"x\\ud800"}', "alice", 1, '{"client_id":"\\udfff"}'),
        )

    with anyio.fail_after(TIMEOUT):
        await store.run_in_writer(old_row)
        (frame,) = (await store.read_frames(ORG, 0)).frames
        assert frame.p == {"a": "x\ufffd"} and frame.ctx == {"client_id": "\ufffd"}
        wire = json.loads(encode_json_array([frame]))
        assert wire[0]["ctx"] == {"client_tx_id": None, "client_id": "\ufffd"}


async def test_health_reports_a_store_that_cannot_write_until_a_probe_commits(
    store: SQLiteStore,
) -> None:
    def read_only(on: bool):
        def switch(conn: sqlite3.Connection) -> None:
            conn.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")

        return switch

    with anyio.fail_after(TIMEOUT):
        assert store.health() is None
        await store.probe()
        await store.run_in_writer(read_only(True))
        with pytest.raises(StoreWriteError, match="readonly"):
            await store.log_frames(ORG, FrameBatch((draft("1"),)))
        assert store.health() == "write failing"
        with pytest.raises(StoreWriteError, match="readonly"):
            await store.probe()
        assert store.health() == "write failing"
        await store.run_in_writer(read_only(False))
        await store.probe()
        assert store.health() is None
    await store.close()
    assert store.health() == "store closed"
