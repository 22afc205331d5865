"""Benchmark of the SQLite store: group commit and compaction. Prints figures, asserts nothing.

Usage::

    python bench/bench_persistence.py [--quick] [--dir DIR]

(a) Updates per second made durable: group commit (``commit_interval_ms=5``, N concurrent
    appenders each awaiting ``durable``) against one commit per update
    (``commit_interval_ms=0``, ``max_batch=1``, sequential).
(b) Time to load a doc of 10,000 logged single-character Text inserts and apply it to a
    fresh pycrdt Doc, before and after compaction.

Use ``--dir`` to measure on the disk the server will use: fsync cost is the point.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from pycrdt import Doc, Text

from persistence import SQLiteStore

ORG = "default"


def sample_update() -> bytes:
    """A realistic small Yjs update: one character typed into a Text."""
    doc = Doc()
    text = doc.get("body", type=Text)
    text.insert(0, "hello")
    updates: list[bytes] = []
    sub = doc.observe(lambda event: updates.append(event.update))
    text.insert(5, "!")
    doc.unobserve(sub)
    return updates[0]


async def group_commit(path: Path, appenders: int, per_appender: int, update: bytes) -> dict:
    async with SQLiteStore(path, commit_interval_ms=5.0) as store:
        before = store.stats().commits

        async def appender(i: int) -> None:
            for _ in range(per_appender):
                appended = await store.append(ORG, f"doc/{i}", update, actor="bench", at=0)
                await appended.durable

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(appenders):
                tg.start_soon(appender, i)
        elapsed = time.perf_counter() - start
        total = appenders * per_appender
        return {"updates": total, "seconds": elapsed, "commits": store.stats().commits - before}


async def fire_and_flush(path: Path, count: int, update: bytes) -> dict:
    """Relayed Yjs updates: nobody awaits each one, a flush at the end."""
    async with SQLiteStore(path, commit_interval_ms=5.0) as store:
        before = store.stats().commits
        start = time.perf_counter()
        for i in range(count):
            await store.append(ORG, f"doc/{i % 100}", update, actor="bench", at=0)
        await store.flush()
        elapsed = time.perf_counter() - start
        return {"updates": count, "seconds": elapsed, "commits": store.stats().commits - before}


async def one_commit_each(path: Path, count: int, update: bytes) -> dict:
    async with SQLiteStore(path, commit_interval_ms=0.0, max_batch=1) as store:
        before = store.stats().commits
        start = time.perf_counter()
        for i in range(count):
            appended = await store.append(ORG, f"doc/{i % 100}", update, actor="bench", at=0)
            await appended.durable
        elapsed = time.perf_counter() - start
        return {"updates": count, "seconds": elapsed, "commits": store.stats().commits - before}


async def load_and_apply(store: SQLiteStore, name: str, repeat: int) -> tuple[float, str]:
    times = []
    text = ""
    for _ in range(repeat):
        start = time.perf_counter()
        stored = await store.load(ORG, name)
        assert stored is not None
        doc = Doc()
        if stored.snapshot is not None:
            doc.apply_update(stored.snapshot)
        for update in stored.updates:
            doc.apply_update(update)
        text = str(doc.get("body", type=Text))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, text


async def compaction(path: Path, inserts: int, repeat: int) -> None:
    doc = Doc()
    body = doc.get("body", type=Text)
    updates: list[bytes] = []
    sub = doc.observe(lambda event: updates.append(event.update))
    for i in range(inserts):
        body.insert(i, "abcdefghij"[i % 10])
    doc.unobserve(sub)
    async with SQLiteStore(path) as store:
        for update in updates:
            await store.append(ORG, "big", update, actor="bench", at=0)
        await store.flush()
        (info,), _ = await store.list_docs(ORG, prefix="big")
        before_ms, before_text = await load_and_apply(store, "big", repeat)
        start = time.perf_counter()
        await store.compact(ORG, "big", doc.get_update())  # merges the rows it drops
        compact_ms = (time.perf_counter() - start) * 1000
        (info_after,), _ = await store.list_docs(ORG, prefix="big")
        after_ms, after_text = await load_and_apply(store, "big", repeat)
    assert before_text == after_text == str(body)
    print(f"(b) doc of {inserts:,} single-character Text inserts (median of {repeat} runs):")
    print(
        f"    log only:         {before_ms:8.1f} ms to load + apply"
        f"  ({info.update_count:,} rows, {info.size:,} bytes)"
    )
    print(f"    compact:          {compact_ms:8.1f} ms (one transaction)")
    print(
        f"    after compaction: {after_ms:8.1f} ms to load + apply"
        f"  ({info_after.update_count} rows, {info_after.size:,} bytes)"
    )
    print(f"    speed-up:         {before_ms / after_ms:8.1f}x")


async def main(quick: bool, directory: str | None) -> None:
    update = sample_update()
    appenders, per_appender = (50, 40) if quick else (100, 200)
    sequential = 200 if quick else 1000
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-persistence-") as tmp:
        tmpdir = Path(tmp)
        print(f"database directory: {tmpdir}; update size {len(update)} bytes")
        grouped = await group_commit(tmpdir / "grouped.db", appenders, per_appender, update)
        single = await one_commit_each(tmpdir / "single.db", sequential, update)
        relayed = await fire_and_flush(tmpdir / "relayed.db", appenders * per_appender, update)
        g_rate = grouped["updates"] / grouped["seconds"]
        s_rate = single["updates"] / single["seconds"]
        r_rate = relayed["updates"] / relayed["seconds"]
        print("(a) updates made durable per second:")
        print(
            f"    group commit, {appenders} concurrent appenders awaiting durable: "
            f"{g_rate:10,.0f}/s  ({grouped['updates']:,} updates, {grouped['commits']} commits,"
            f" {grouped['updates'] / grouped['commits']:.0f} per commit)"
        )
        print(
            f"    one commit per update, sequential:               {s_rate:10,.0f}/s"
            f"  ({single['updates']:,} updates, {single['commits']} commits,"
            f" {single['seconds'] / single['updates'] * 1000:.2f} ms each)"
        )
        print(f"    ratio group / single:                            {g_rate / s_rate:10.1f}x")
        print(
            f"    (relayed: appends not awaited, one flush:        {r_rate:10,.0f}/s"
            f"  ({relayed['updates']:,} updates, {relayed['commits']} commits))"
        )
        await compaction(tmpdir / "compaction.db", 10_000, 3 if quick else 7)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer updates, fewer repeats")
    parser.add_argument("--dir", help="directory for the database files (default: temp dir)")
    args = parser.parse_args()
    anyio.run(main, args.quick, args.dir, backend="asyncio")
