"""Benchmark of several nodes (issue 12): Yjs fan-out across nodes, and what the bus costs.

Run on demand from the repository root (prints figures, asserts nothing; loopback only;
needs the machine's PostgreSQL and Redis, see ``tests/cluster.py``; every run bounded in
count and time)::

    python -m bench.bench_cluster [--quick] [--nodes 1,2,3] [--json PATH]

Each run starts fresh ``crdt-sync serve`` nodes (``tests.cluster.Cluster``: a throwaway
PostgreSQL database, a Redis prefix of their own, ``--log-level warning``).

(a) Cross-node fan-out, for each node count of ``--nodes``: ``--rooms`` rooms, one writer
    per room connected to node 1 (``crdt_sync.client``, genuine Yjs text inserts), and
    ``--receivers`` receivers per room spread round-robin over the nodes (with 3 nodes,
    a third of them on node 1, two thirds reached through Redis). Receivers are raw
    y-websocket sockets without a Y.Doc that scan relayed updates for the marker each
    insert carries (room, sequence number, send time on the machine's monotonic
    clock), in ``--procs`` processes. Every writer inserts ``--rate`` times a second for
    ``--seconds``. Printed: deliveries/s, latency from the insert to its arrival at a
    receiver (p50/p99, and p50/p99 of the receivers on node 1 versus the others),
    lost and duplicated deliveries, and server CPU (all nodes) per 1,000 deliveries.
(b) The cost of the bus per update: the same load on one node with Redis (every update
    published, its own messages dropped on return) and on one node without
    ``--redis-url`` (same PostgreSQL store): server CPU-ms per 1,000 deliveries and per
    update written; the difference is what the bus costs.

Results: printed, and saved as JSON under ``bench/results/`` (``--json`` to choose).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import websockets
from pycrdt import Doc, Text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procstat import cpu_seconds, mib, rss_kib
from bench.worker_processes import WorkerProcesses
from crdt_sync.client import connect
from tests.cluster import REDIS_URL, Cluster, throwaway_database
from tests.server_process import ServerProcess

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
QUIET = ("--log-level", "warning")
#: y-websocket messages of a receiver that keeps no doc.
EMPTY_STEP1 = b"\x00\x00\x01\x00"
EMPTY_STEP2 = b"\x00\x01\x02\x00\x00"
MARKER = re.compile(rb"~M(\d+)\.(\d+)\.(\d+)~")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def now_us() -> int:
    """The machine's monotonic clock (CLOCK_MONOTONIC is system-wide on Linux, so a
    time taken in the writer's process compares with one taken in a receiver's)."""
    return time.monotonic_ns() // 1000


# -- receivers (child processes) -----------------------------------------------------------


class Receiver:
    """One y-websocket connection that counts the markers of its room's updates."""

    def __init__(self, url: str, room: int, node: int) -> None:
        self.url = url
        self.room = room
        self.node = node
        self.seen: set[int] = set()
        self.latencies_us: list[int] = []
        self.duplicates = 0
        self.foreign = 0
        self.closed = ""
        self.synced = False

    def take(self, update: bytes) -> None:
        arrived = now_us()
        for room, seq, sent in MARKER.findall(update):
            if int(room) != self.room:
                self.foreign += 1
                continue
            seq = int(seq)
            if seq in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(seq)
            self.latencies_us.append(arrived - int(sent))

    async def run(self, ready: anyio.Event) -> None:
        try:
            async with websockets.connect(self.url, max_size=None, compression=None) as ws:
                await ws.send(EMPTY_STEP1)
                async for message in ws:
                    if not isinstance(message, bytes) or len(message) < 2 or message[0] != 0:
                        continue  # awareness, or text
                    kind = message[1]
                    if kind == 0:
                        await ws.send(EMPTY_STEP2)
                    elif kind == 1:
                        self.synced = True
                        ready.set()
                    elif kind == 2:
                        self.take(message)
                self.closed = f"closed by server: {ws.close_code}"
        except websockets.ConnectionClosed as exc:
            self.closed = f"connection closed: {exc}"
        except OSError as exc:
            self.closed = f"cannot connect: {exc}"
        finally:
            ready.set()

    def report(self) -> dict[str, Any]:
        out = {
            "room": self.room,
            "node": self.node,
            "received": len(self.seen),
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "closed": self.closed,
            "latencies_us": self.latencies_us,
        }
        self.seen.clear()
        self.latencies_us = []
        self.duplicates = self.foreign = 0
        return out


async def _worker_main(targets: list[tuple[str, int, int]], pipe: Connection) -> None:
    receivers = [Receiver(url, room, node) for url, room, node in targets]
    async with anyio.create_task_group() as tg:
        readies = []
        for i, receiver in enumerate(receivers):
            ready = anyio.Event()
            readies.append(ready)
            tg.start_soon(receiver.run, ready)
            if i % 20 == 19:
                await anyio.sleep(0.01)  # do not stampede the accept queues
        with anyio.move_on_after(30):
            for ready in readies:
                await ready.wait()
        pipe.send(("ready", sum(1 for r in receivers if r.synced and not r.closed)))
        while True:
            command = await anyio.to_thread.run_sync(pipe.recv)
            if command[0] == "stop":
                break
            _, expected, timeout = command  # expected: markers per room
            with anyio.move_on_after(timeout):
                while not all(
                    len(r.seen) >= expected.get(r.room, 0) or r.closed for r in receivers
                ):
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # anything after the last expected marker is extra
            pipe.send(("result", [r.report() for r in receivers]))
        tg.cancel_scope.cancel()


def receiver_worker(targets: list[tuple[str, int, int]], pipe: Connection) -> None:
    """Child process: the receivers ``(ws room url, room index, node index)``."""
    anyio.run(_worker_main, targets, pipe)


class Receivers(WorkerProcesses):
    def __init__(self, targets: list[tuple[str, int, int]], procs: int) -> None:
        shares = [targets[p::procs] for p in range(procs)]
        super().__init__(receiver_worker, [(share,) for share in shares if share], "receiver")

    async def collect(self, expected: dict[int, int], timeout: float) -> list[dict]:
        for pipe in self.pipes:
            pipe.send(("expect", expected, timeout))
        reports: list[dict] = []
        for pipe in self.pipes:
            reports += (await self._recv(pipe, timeout + 30))[1]
        return reports


# -- writers -------------------------------------------------------------------------------


async def write(ws_url: str, rooms: int, rate: float, seconds: float) -> dict[str, Any]:
    """One writer per room on ``ws_url``: ``rate`` inserts a second each, for
    ``seconds``; returns how many each sent and the wall time."""
    sent = dict.fromkeys(range(rooms), 0)
    count = max(1, int(rate * seconds))
    period = 1.0 / rate
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for room in range(rooms):
            client = await stack.enter_async_context(connect(ws_url, f"bench/room-{room}"))
            with anyio.fail_after(20):
                await client.synced()
            clients.append(client)
        started = time.monotonic()

        async def writer(room: int) -> None:
            doc: Doc = clients[room].doc
            text = doc.get("body", type=Text)
            # Writers start spread over one period, not all at once.
            await anyio.sleep(period * room / rooms)
            first = time.monotonic()
            for seq in range(count):
                due = first + seq * period
                delay = due - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                text.insert(len(text), f"~M{room}.{seq}.{now_us()}~")
                sent[room] += 1

        with anyio.fail_after(seconds + 60):
            async with anyio.create_task_group() as tg:
                for room in range(rooms):
                    tg.start_soon(writer, room)
            for client in clients:
                await client.flush()
        elapsed = time.monotonic() - started
    return {"sent": sent, "elapsed": elapsed}


# -- one run -------------------------------------------------------------------------------


@contextlib.contextmanager
def nodes_for(
    workdir: Path, database_url: str, size: int, redis: bool
) -> Iterator[list[ServerProcess]]:
    if redis:
        with Cluster(workdir, database_url, size=size, redis_url=REDIS_URL, args=QUIET) as c:
            yield c.nodes
    else:
        assert size == 1
        node_dir = workdir / "node-1"
        node_dir.mkdir()
        with ServerProcess(node_dir, "--database-url", database_url, *QUIET) as node:
            yield [node]


async def one_run(
    workdir: Path, args: argparse.Namespace, size: int, redis: bool, label: str
) -> dict[str, Any]:
    rooms, per_room = args.rooms, args.receivers
    with (
        throwaway_database("crdt_sync_bench") as url,
        nodes_for(workdir, url, size, redis) as nodes,
    ):
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        # Receiver k of room r is on node (r * per_room + k) % size: round-robin.
        spots = [
            (room, (room * per_room + k) % size) for room in range(rooms) for k in range(per_room)
        ]
        targets = [(f"{nodes[at].ws_url}/bench/room-{room}", room, at) for room, at in spots]
        receivers = Receivers(targets, args.procs)
        try:
            connected = await receivers.ready()
            await anyio.sleep(1.0)  # every node has joined every room's channel
            rss_before = sum(rss_kib(p) for p in pids)
            cpu_before = [cpu_seconds(p) for p in pids]
            own_before = time.process_time()
            sub_before = [cpu_seconds(p) for p in receivers.pids]
            wall_before = time.monotonic()
            written = await write(nodes[0].ws_url, rooms, args.rate, args.seconds)
            expected = written["sent"]
            reports = await receivers.collect(expected, timeout=30)
            wall = time.monotonic() - wall_before - 0.2
            server_cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu_before, strict=True)]
            driver_cpu = time.process_time() - own_before
            sub_cpu = [cpu_seconds(p) - c for p, c in zip(receivers.pids, sub_before, strict=True)]
            rss_after = sum(rss_kib(p) for p in pids)
        finally:
            receivers.stop()
        problems = [
            line
            for n in nodes
            for line in n.log().splitlines()
            if any(w in line for w in ("WARNING", "ERROR", "Traceback"))
            and "auth is OFF" not in line
        ]
    updates = sum(expected.values())
    want = sum(expected[r["room"]] for r in reports)
    received = sum(r["received"] for r in reports)
    lat = [x / 1000 for r in reports for x in r["latencies_us"]]
    local = [x / 1000 for r in reports if r["node"] == 0 for x in r["latencies_us"]]
    remote = [x / 1000 for r in reports if r["node"] != 0 for x in r["latencies_us"]]
    total_cpu = sum(server_cpu)
    row = {
        "label": label,
        "nodes": size,
        "redis": redis,
        "rooms": rooms,
        "receivers": len(targets),
        "receivers_connected": connected,
        "updates": updates,
        "updates_per_s": updates / written["elapsed"],
        "deliveries_expected": want,
        "deliveries": received,
        "lost": want - received,
        "duplicates": sum(r["duplicates"] for r in reports),
        "closed": [r["closed"] for r in reports if r["closed"]][:5],
        "deliveries_per_s": received / max(written["elapsed"], 1e-9),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "node1_p50_ms": pct(local, 0.5),
        "node1_p99_ms": pct(local, 0.99),
        "other_nodes_p50_ms": pct(remote, 0.5),
        "other_nodes_p99_ms": pct(remote, 0.99),
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_1000_deliveries": total_cpu * 1e6 / max(received, 1),
        "server_cpu_ms_per_update": total_cpu * 1000 / max(updates, 1),
        "driver_cpu_pct": driver_cpu / max(wall, 1e-9) * 100,
        "receiver_proc_cpu_pct": [c / max(wall, 1e-9) * 100 for c in sub_cpu],
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "server_log_problems": problems[:10],
    }
    flags = ""
    if row["lost"] or row["duplicates"] or row["closed"]:
        flags += f"  !! lost {row['lost']}, duplicated {row['duplicates']}, closed {row['closed']}"
    if connected != len(targets):
        flags += f"  !! {connected}/{len(targets)} receivers connected"
    if problems:
        flags += f"  !! {len(problems)} warning/error lines in the logs, first: {problems[0][:200]}"
    if max(row["receiver_proc_cpu_pct"], default=0) > 90 or row["driver_cpu_pct"] > 90:
        flags += "  !! a client process is near a full core"
    print(
        f"    {label:22s} {row['deliveries_per_s']:7.0f} deliveries/s  p50 {row['p50_ms']:6.2f} "
        f"p99 {row['p99_ms']:6.2f} ms (node 1: {row['node1_p50_ms']:.2f}/"
        f"{row['node1_p99_ms']:.2f}, others: {row['other_nodes_p50_ms']:.2f}/"
        f"{row['other_nodes_p99_ms']:.2f})  server CPU "
        f"{row['server_cpu_ms_per_1000_deliveries']:6.0f} ms/1000 deliveries, "
        f"{row['server_cpu_ms_per_update']:.2f} ms/update; RSS {mib(rss_after)}" + flags
    )
    return row


# -- main ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out: dict[str, Any] = {
        "bench": "bench_cluster",
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "config": {
            "rooms": args.rooms,
            "receivers_per_room": args.receivers,
            "rate_per_room": args.rate,
            "seconds": args.seconds,
            "procs": args.procs,
        },
    }
    began = time.monotonic()
    load = (
        f"{args.rooms} rooms x ({args.receivers} receivers + 1 writer on node 1), "
        f"{args.rate:g} inserts/s per writer for {args.seconds:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        base = Path(tmp)
        print(
            f"crdt-sync bench_cluster ({out['mode']}); {os.cpu_count()} CPUs, shared by the "
            "nodes and the clients"
        )
        print(f"(a) fan-out across nodes: {load}; receivers round-robin over the nodes")
        out["a"] = []
        for size in args.nodes:
            workdir = base / f"a-{size}"
            workdir.mkdir()
            out["a"].append(await one_run(workdir, args, size, True, f"{size} node(s), Redis"))
        if not args.skip_b:
            print(f"(b) bus cost: one node, {load}")
            out["b"] = []
            for redis in (False, True):
                workdir = base / f"b-{'redis' if redis else 'plain'}"
                workdir.mkdir()
                label = "1 node, Redis" if redis else "1 node, no Redis"
                out["b"].append(await one_run(workdir, args, 1, redis, label))
            plain, bus = out["b"]
            out["bus_cost"] = {
                "cpu_ms_per_update": bus["server_cpu_ms_per_update"]
                - plain["server_cpu_ms_per_update"],
                "cpu_ms_per_1000_deliveries": bus["server_cpu_ms_per_1000_deliveries"]
                - plain["server_cpu_ms_per_1000_deliveries"],
            }
            print(
                f"    the bus costs {out['bus_cost']['cpu_ms_per_update']:+.3f} server CPU-ms "
                f"per update ({out['bus_cost']['cpu_ms_per_1000_deliveries']:+.0f} ms per "
                "1,000 deliveries) on one node"
            )
    out["total_s"] = time.monotonic() - began
    print_table(out)
    print(f"total {out['total_s']:.0f} s")
    return out


def print_table(out: dict) -> None:
    rows = out["a"] + out.get("b", [])
    print()
    print(
        f"  {'run':22s} {'deliv/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'lost':>5s} "
        f"{'dup':>4s} {'CPU ms/1k deliv':>15s} {'CPU ms/update':>13s}"
    )
    for r in rows:
        print(
            f"  {r['label']:22s} {r['deliveries_per_s']:8.0f} {r['p50_ms']:7.2f} "
            f"{r['p99_ms']:7.2f} {r['lost']:5d} {r['duplicates']:4d} "
            f"{r['server_cpu_ms_per_1000_deliveries']:15.0f} "
            f"{r['server_cpu_ms_per_update']:13.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about 40 s")
    parser.add_argument("--nodes", default="1,2,3", help="node counts of (a) (1,2,3)")
    parser.add_argument("--rooms", type=int, help="rooms, one writer each (20; quick 10)")
    parser.add_argument("--receivers", type=int, help="receivers per room (6)")
    parser.add_argument("--rate", type=float, help="inserts per second per writer (20)")
    parser.add_argument("--seconds", type=float, help="how long the writers write (8; quick 3)")
    parser.add_argument("--procs", type=int, help="receiver processes (CPUs, 2..4)")
    parser.add_argument("--skip-b", action="store_true", help="skip (b), the bus cost")
    parser.add_argument("--json", default=None, metavar="PATH", help="where to save the results")
    args = parser.parse_args()
    defaults = (
        {"rooms": 10, "receivers": 6, "rate": 20.0, "seconds": 3.0}
        if args.quick
        else {
            "rooms": 20,
            "receivers": 6,
            "rate": 20.0,
            "seconds": 8.0,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.procs is None:
        args.procs = max(2, min(4, os.cpu_count() or 2))
    args.nodes = [int(n) for n in str(args.nodes).split(",") if n]
    if (
        not args.nodes
        or not all(1 <= n <= 5 for n in args.nodes)
        or not 1 <= args.rooms <= 500
        or not 1 <= args.receivers <= 100
        or args.rooms * args.receivers > 3000
        or not 0 < args.rate <= 200
        or not 0 < args.seconds <= 60
        or not 1 <= args.procs <= 32
    ):
        parser.error(
            "bounded: 1 <= --nodes <= 5, --rooms <= 500, --receivers <= 100, at most 3000 "
            "receivers, 0 < --rate <= 200, 0 < --seconds <= 60, 1 <= --procs <= 32"
        )
    out = anyio.run(run, args)
    path = (
        Path(args.json)
        if args.json
        else (
            RESULTS
            / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}-{out['mode']}-{secrets.token_hex(2)}.json"
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results saved to {path}")


if __name__ == "__main__":
    main()
