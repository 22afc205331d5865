"""Flood each bounded resource of a real server and print its memory before and after.

Run on demand from the repository root (prints figures, asserts nothing; loopback only;
every flood bounded in count and in time)::

    python bench/bench_bounds.py [--quick] [--baseline] [--dir DIR]

Each flood runs against a fresh ``crdt-sync serve`` child process
(``tests/server_process.py``); the server's RSS (``VmRSS``) is read before the flood,
at its peak (sampled every 50 ms) and after it. One client does each flood, as an
attacker would:

awareness   removals of awareness client ids nobody ever saw (~4 MB sent), then live
            states for ever new client ids (reconnecting whenever it is closed);
pending     Yjs updates whose dependencies never come (20 MB sent), reconnecting
            whenever it is closed;
get-docs    ``GET /docs/<random>`` of docs that do not exist (rooms loaded after it);
views       ``view`` messages for 2,000 different records on one frame socket;
writes      one Yjs client streaming 256 KiB updates (overwrites of one map entry, so
            the doc stays small) without waiting, the writer slowed down
            (``--commit-interval-ms 1000``; bounded run: an 8 MiB writer queue);
base-sid    100 mutations with ``base_sid`` against a record with 10,000 frames (time),
            and 100 without, one at a time.

``--baseline`` passes none of the bound flags, to run the same floods against code
without them (``PYTHONPATH=<checkout of the base commit>``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import websockets
from pycrdt import Doc, Map, Text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procstat import PeakRss, mib, rss_kib
from rooms.codec import (
    AwarenessEntry,
    encode_awareness_update,
    encode_sync_step1,
    encode_sync_update,
)
from tests.server_process import ServerProcess

#: The bounds this benchmark runs the server with (their defaults but the room limit).
BOUND_FLAGS = ("--max-rooms", "1000")
PHASE_SECONDS = 120.0


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://", 1) + path


async def send_or_closed(ws: Any, message: bytes | str) -> int | None:
    """Send; the close code if the server closed the socket instead."""
    try:
        await ws.send(message)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else 1006
    return None


# -- floods --------------------------------------------------------------------------


async def flood_awareness(server: ServerProcess, scale: float) -> str:
    codes: dict[int, int] = {}
    sent = 0
    unknown = int(200_000 * scale)
    client_id = 1
    # (1) removals of client ids nobody ever saw: ~20 bytes each
    async with websockets.connect(ws_url(server, "/yjs/aw-flood"), max_size=None) as ws:
        await ws.recv()
        for start in range(0, unknown, 1000):
            entries = [AwarenessEntry(10**9 + i, 1, "null") for i in range(start, start + 1000)]
            message = encode_awareness_update(entries)
            sent += len(message)
            code = await send_or_closed(ws, message)
            if code is None:
                code = await answered(ws)  # relayed back to its sender
            if code is not None:
                codes[code] = codes.get(code, 0) + 1
                break
    # (2) live states for ever new client ids, 16 a message, each message answered (the
    # server echoes awareness to its sender) or the socket closed; reconnect when closed
    live = int(50_000 * scale)
    accepted = connections = 0
    while client_id < live and connections < 1000:
        connections += 1
        async with websockets.connect(ws_url(server, "/yjs/aw-flood"), max_size=None) as ws:
            await ws.recv()
            while client_id < live:
                entries = [AwarenessEntry(client_id + i, 1, '{"u":"x"}') for i in range(16)]
                client_id += 16
                message = encode_awareness_update(entries)
                sent += len(message)
                code = await send_or_closed(ws, message)
                if code is None:
                    code = await answered(ws)
                if code is not None:
                    codes[code] = codes.get(code, 0) + 1
                    break
                accepted += len(entries)
    return (
        f"{unknown} unknown + {live} live ids ({accepted} taken), {sent / 1e6:.1f} MB sent "
        f"on {connections} connections; closes {codes}"
    )


async def answered(ws: Any) -> int | None:
    """Wait for the server's next message: ``None``, or the close code if it closed."""
    try:
        with anyio.fail_after(10):
            await ws.recv()
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else 1006
    return None


async def flood_pending(server: ServerProcess, scale: float) -> str:
    doc = Doc()
    text = doc.get("body", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    total = int(2000 * scale)
    for i in range(total + 1):
        text += f"{i}:" + "x" * 10_000
    codes: dict[int, int] = {}
    sent = 0
    index = 1  # never updates[0]: every later one waits for it
    connections = 0
    while index <= total and connections < 200:
        connections += 1
        async with websockets.connect(ws_url(server, "/yjs/pending"), max_size=None) as ws:
            await ws.recv()
            while index <= total:
                message = encode_sync_update(updates[index])
                index += 1
                sent += len(message)
                # Then a sync step 1, which the server answers: one update at a time.
                code = await send_or_closed(ws, message)
                if code is None:
                    code = await send_or_closed(ws, encode_sync_step1(b"\x00"))
                if code is None:
                    code = await answered(ws)
                if code is not None:
                    codes[code] = codes.get(code, 0) + 1
                    break
    return f"{total} updates, {sent / 1e6:.1f} MB sent on {connections} connections; closes {codes}"


async def flood_get_docs(server: ServerProcess, scale: float) -> str:
    count = int(20_000 * scale)
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

        async def worker(n: int) -> None:
            for _ in range(n):
                name = f"nope/{random.getrandbits(64):x}"
                status = (await http.get(f"/docs/{name}")).status_code
                statuses[status] = statuses.get(status, 0) + 1

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker, count // 20)
        rooms = (await http.get("/healthz")).json()["rooms"]
    return f"{count} GETs {statuses}; rooms loaded after: {rooms}"


async def flood_views(server: ServerProcess, scale: float) -> str:
    count = int(2000 * scale)
    sent = 0
    code = None
    async with websockets.connect(ws_url(server, "/sync/v1/ws"), max_size=None) as ws:
        for i in range(count):
            message = json.dumps({"type": "view", "t": "flood", "id": str(i)})
            if (code := await send_or_closed(ws, message)) is not None:
                break
            sent += 1
        if code is None:
            with anyio.move_on_after(30):  # let the server get through them
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    while (await http.get("/healthz")).json()["rooms"] < count:
                        try:
                            with anyio.move_on_after(0.2):
                                await ws.recv()
                        except websockets.ConnectionClosed as exc:
                            code = exc.rcvd.code if exc.rcvd is not None else 1006
                            break
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        rooms = (await http.get("/healthz")).json()["rooms"]
    return f"{sent} views sent; close {code}; rooms loaded: {rooms}"


async def flood_writes(server: ServerProcess, scale: float) -> str:
    # Overwrites of one map entry: the doc keeps only the newest value (the old ones
    # are garbage-collected), so what grows is what waits for the writer.
    doc = Doc()
    fields = doc.get("fields", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    count = int(400 * scale)
    peak_queue = 0
    sent = 0
    async with (
        websockets.connect(ws_url(server, "/yjs/writes"), max_size=None) as ws,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await ws.recv()
        started = time.perf_counter()
        for i in range(count):
            fields["v"] = f"{i}:" + "y" * (256 * 1024)
            message = encode_sync_update(updates[-1])
            updates.clear()
            await ws.send(message)
            sent += len(message)
            if i % 20 == 0:
                metrics = (await http.get("/metrics")).text
                for line in metrics.splitlines():
                    if line.startswith("crdt_sync_store_queue "):
                        peak_queue = max(peak_queue, int(float(line.split()[1])))
        elapsed = time.perf_counter() - started
    return (
        f"{count} updates of 256 KiB ({sent / 1e6:.0f} MB) in {elapsed:.1f} s; "
        f"peak store queue {peak_queue} ops"
    )


async def bench_base_sid(server: ServerProcess, scale: float) -> str:
    frames = int(10_000 * scale)
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:

        async def mutate(mutations: list[dict[str, Any]]) -> list[dict[str, Any]]:
            response = await http.post("/sync/v1/mutations", json={"mutations": mutations})
            assert response.status_code == 200, response.text
            return response.json()["results"]

        [first] = await mutate([{"t": "hot", "id": "1", "op": "i", "p": {"n": 0}}])
        base = first["sid"]
        done = 0
        while done < frames:
            n = min(1000, frames - done)
            batch = [{"t": "hot", "id": "1", "op": "u", "p": {"n": done + i + 1}} for i in range(n)]
            await mutate(batch)
            done += n
        body = {
            "mutations": [{"t": "hot", "id": "1", "op": "u", "p": {"m": 1}}],
            "base_sid": base,
            "client_id": "other",
        }
        timings = []
        for with_base in (False, True, False, True):
            started = time.perf_counter()
            for i in range(100):
                body["mutations"][0]["p"] = {"m": f"{with_base}-{i}-{len(timings)}"}
                if with_base:
                    body["base_sid"] = base
                else:
                    body.pop("base_sid", None)
                response = await http.post("/sync/v1/mutations", json=body)
                assert response.status_code == 200, response.text
            timings.append(time.perf_counter() - started)
    return (
        f"100 mutations over {frames} frames: {min(timings[1::2]):.2f} s with base_sid, "
        f"{min(timings[0::2]):.2f} s without"
    )


# -- main ----------------------------------------------------------------------------


#: A slow disk for the writer-queue flood: the writer gathers writes for 1 s. The
#: bounded run uses an 8 MiB queue (default 64 MiB) so that the bound shows.
SLOW_DISK = ("--commit-interval-ms", "1000")
SMALL_QUEUE = ("--max-queued-write-bytes", str(8 * 1024 * 1024))

FLOODS: list[tuple[str, Callable[[ServerProcess, float], Awaitable[str]], tuple[str, ...]]] = [
    ("awareness", flood_awareness, ()),
    ("pending", flood_pending, ()),
    ("get-docs", flood_get_docs, ()),
    ("views", flood_views, ()),
    ("writes", flood_writes, SLOW_DISK),  # + SMALL_QUEUE unless --baseline
    ("base-sid", bench_base_sid, ()),
]


async def run(args: argparse.Namespace) -> None:
    scale = 0.1 if args.quick else 1.0
    flags = () if args.baseline else BOUND_FLAGS
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        import crdt_sync

        print(
            f"crdt-sync bench_bounds ({'quick' if args.quick else 'full'}"
            f"{', baseline: no bound flags' if args.baseline else ''}); "
            f"code from {Path(crdt_sync.__file__).parent.parent}; {os.cpu_count()} CPUs"
        )
        print(f"{'flood':<10} {'RSS before':>11} {'peak':>11} {'after':>11}  what")
        for name, flood, extra in FLOODS:
            if args.only and name not in args.only:
                continue
            workdir = Path(tmp) / name
            workdir.mkdir()
            if name == "writes" and not args.baseline:
                extra = (*extra, *SMALL_QUEUE)
            server = ServerProcess(workdir, "--log-level", "warning", *flags, *extra).start()
            try:
                assert server.proc is not None
                pid = server.proc.pid
                async with httpx.AsyncClient(base_url=server.url) as http:
                    await http.get("/healthz")  # warm the routes once
                before = rss_kib(pid)
                peak = PeakRss(pid)
                with anyio.fail_after(PHASE_SECONDS):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(peak.run)
                        what = await flood(server, scale)
                        tg.cancel_scope.cancel()
                after = rss_kib(pid)
                print(
                    f"{name:<10} {mib(before):>11} {mib(peak.kib):>11} {mib(after):>11}  {what}",
                    flush=True,
                )
            except TimeoutError:
                print(f"{name:<10} did not finish within {PHASE_SECONDS:.0f} s", flush=True)
            finally:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of each flood")
    parser.add_argument("--baseline", action="store_true", help="start the server without bounds")
    parser.add_argument("--dir", default=None, help="where the databases go (default: /tmp)")
    parser.add_argument("--only", nargs="*", help="run only these floods")
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
