"""Server-level benchmark of documents: load time, memory per doc, durable HTTP writes.

Run on demand from the repository root (prints figures, asserts nothing; loopback only;
every phase bounded in time)::

    python bench/bench_docs.py [--quick] [--dir DIR]

Each phase runs a fresh ``crdt-sync serve`` child process (``tests/server_process.py``):

(a) Connect + sync time of a fresh Yjs client (WebSocket handshake, sync step 1, step 2
    received and applied) to a doc whose store holds N logged updates, cold (the room
    is loaded from SQLite for this client; the server is restarted with ``kill -9``
    between samples so the log stays uncompacted) and warm, before and after compaction
    (a SIGTERM with the room open folds the log into a snapshot).
(b) Server RSS (``VmRSS``) with D docs of ~20 KB each open. First rooms only: each doc
    visited once (connect + sync, disconnect) with a long ``--room-idle-seconds``, so
    all D stay loaded. Then, on a fresh server with ``--room-idle-seconds 1``: the
    clients stay connected until all D are open (connections included), leave, and
    RSS is read again once every room unloaded (``/healthz`` ``rooms: 0``); twice, to
    tell memory kept for reuse from memory that keeps growing.
(c) Durable writes per second: N concurrent clients, each posting small Yjs updates with
    ``POST /docs/{doc}/update`` and waiting for the 200 (= committed) before the next,
    one doc per client and all on one doc. The load generator is a minimal keep-alive
    HTTP/1.1 client on raw sockets, so that the client is not what is measured; it
    shares the machine's CPUs with the server, and its CPU use is printed as well.

Use ``--dir`` to measure on the disk the server will use: fsync cost matters for (c).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import websockets
from pycrdt import Doc, Map, Text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procstat import cpu_seconds, mib, rss_kib
from rooms.codec import (
    SyncStep2,
    decode_message,
    encode_sync_step1,
    encode_sync_update,
)
from tests.server_process import ServerProcess

HOST = "127.0.0.1"


# -- process figures ---------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.05)


# -- clients -----------------------------------------------------------------------------


async def connect_and_sync(ws_url: str, name: str) -> tuple[Any, Doc]:
    """A Yjs client's first moments: handshake, step 1 both ways, step 2 applied."""
    ws = await websockets.connect(f"{ws_url}/{quote(name, safe='/')}", max_size=None)
    doc = Doc()
    await ws.send(encode_sync_step1(doc.get_state()))
    while True:
        message = decode_message(await ws.recv())
        if isinstance(message, SyncStep2):
            doc.apply_update(message.update)
            return ws, doc


class HttpConnection:
    """A keep-alive HTTP/1.1 connection that sends one request at a time (no parsing
    beyond status line and Content-Length: the server under test always sends it)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        return cls(await anyio.connect_tcp(HOST, port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {quote(path, safe='/')} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        await self.stream.send(head.encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        header, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += await self.stream.receive()
        self.buffer = rest[length:]
        return status, rest[:length]

    async def aclose(self) -> None:
        await self.stream.aclose()


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- (a) load time, log vs snapshot ------------------------------------------------------


async def stored_info(server: ServerProcess, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        docs = (await http.get("/docs", params={"prefix": name})).json()["docs"]
    return next(d for d in docs if d["name"] == name)


def load_ms_from_log(server: ServerProcess, name: str) -> float | None:
    marker = f"room={name!r} org=default loaded in "
    for line in server.log().splitlines():
        if marker in line:
            return float(line.split(marker, 1)[1].split(" ms", 1)[0])
    return None


async def timed_sync(server: ServerProcess, name: str, expect_len: int) -> float:
    started = time.perf_counter()
    ws, doc = await connect_and_sync(server.ws_url, name)
    took = time.perf_counter() - started
    await ws.close()
    got = len(str(doc.get("body", type=Text)))
    if got != expect_len:
        print(f"  !! synced doc has {got} characters, expected {expect_len}")
    return took * 1000


async def bench_load(workdir: Path, updates: int, samples: int) -> None:
    print(f"(a) connect + sync of a doc with {updates} logged updates, before/after compaction")
    name = "bench/log"
    keep_log = ("--compact-updates", "100000000")
    source = Doc()
    source["body"] = body = Text()
    pending: list[bytes] = []
    source.observe(lambda event: pending.append(event.update))
    rng = random.Random(1)
    server = ServerProcess(workdir, *keep_log).start()
    try:
        ws = await websockets.connect(f"{server.ws_url}/{name}", max_size=None)
        started = time.perf_counter()
        for i in range(updates):
            # Typing: mostly appends, sometimes elsewhere, a word at a time.
            at = len(body) if rng.random() < 0.8 else rng.randint(0, len(body))
            body.insert(at, f"w{i} ")
            await ws.send(encode_sync_update(pending.pop()))
        await ws.close()

        async def all_logged() -> bool:
            return (await stored_info(server, name))["update_count"] >= updates

        await poll(all_logged, 60, "the updates to be logged")
        wrote = time.perf_counter() - started
        info = await stored_info(server, name)
        print(
            f"    wrote {updates} updates over one WebSocket in {wrote:.2f} s; "
            f"stored: {info['update_count']} log rows, {info['size'] / 1024:.0f} KiB"
        )
    finally:
        server.kill()
    expect = len(str(body))

    async def cold_samples(label: str, *args: str) -> None:
        cold: list[float] = []
        server_ms: list[float] = []
        warm: list[float] = []
        for _ in range(samples):
            proc = ServerProcess(workdir, *args).start()
            try:
                cold.append(await timed_sync(proc, name, expect))
                server_ms.append(load_ms_from_log(proc, name) or float("nan"))
                warm.append(await timed_sync(proc, name, expect))
            finally:
                proc.kill()  # no compaction on the way out
        print(
            f"    {label}: cold connect+sync median {statistics.median(cold):.1f} ms "
            f"(min {min(cold):.1f}, max {max(cold):.1f}; server load "
            f"{statistics.median(server_ms):.1f} ms) | warm {statistics.median(warm):.1f} ms"
        )

    await cold_samples(f"log of {updates} updates", *keep_log)
    # Compaction: load the room, then SIGTERM with it open (shutdown compacts open rooms).
    proc = ServerProcess(workdir, *keep_log).start()
    try:
        await timed_sync(proc, name, expect)
        started = time.perf_counter()
        proc.stop(signal.SIGTERM)
        stop_ms = (time.perf_counter() - started) * 1000
    finally:
        proc.__exit__(None, None, None)
    proc = ServerProcess(workdir).start()
    try:
        info = await stored_info(proc, name)
    finally:
        proc.kill()
    print(
        f"    SIGTERM with the room open took {stop_ms:.0f} ms; now {info['update_count']} log "
        f"rows, snapshot {info['size'] / 1024:.0f} KiB"
    )
    await cold_samples("snapshot", *keep_log)


# -- (b) memory per doc ------------------------------------------------------------------


def doc_of_about(kib: int, seed: int) -> bytes:
    """~``kib`` KiB of content made like an editor makes it: many inserts, some fields."""
    rng = random.Random(seed)
    doc = Doc()
    doc["body"] = body = Text()
    doc["fields"] = fields = Map()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    while len(body) < kib * 1024:
        chunk = " ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) + ". "
        body.insert(rng.randint(0, len(body)) if rng.random() < 0.3 else len(body), chunk)
    for i in range(10):
        fields[f"f{i}"] = rng.choice([i, f"value {i}", True])
    return doc.get_update()


async def bench_memory(workdir: Path, docs: int, kib: int) -> None:
    print(f"(b) server RSS with {docs} docs of ~{kib} KiB open, and after they unload")
    names = [f"bench/mem/{i:05d}" for i in range(docs)]
    server = ServerProcess(workdir, "--log-level", "warning").start()
    try:
        port = port_of(server)
        queue = iter(enumerate(names))
        sizes: list[int] = []

        async def writer() -> None:
            conn = await HttpConnection.open(port)
            try:
                for i, name in queue:
                    update = doc_of_about(kib, i)
                    sizes.append(len(update))
                    status, body = await conn.request("POST", f"/docs/{name}/update", update)
                    if status != 200:
                        print(f"  !! POST {name}: {status} {body[:200]!r}")
            finally:
                await conn.aclose()

        started = time.perf_counter()
        with anyio.fail_after(300):
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(writer)
        print(
            f"    stored {docs} docs (updates of {statistics.mean(sizes) / 1024:.1f} KiB on "
            f"average) in {time.perf_counter() - started:.1f} s"
        )
    finally:
        server.stop()

    # Rooms only: each client connects, syncs and leaves; the rooms stay loaded (long
    # idle time), so the growth is the docs', not the connections'.
    server = ServerProcess(workdir, "--log-level", "warning", "--room-idle-seconds", "3600")
    server.start()
    try:
        assert server.proc is not None
        async with httpx.AsyncClient(base_url=server.url) as http:
            await anyio.sleep(0.5)
            rss_start = rss_kib(server.proc.pid)
            limiter = anyio.Semaphore(50)

            async def visit(name: str) -> None:
                async with limiter:
                    ws, _ = await connect_and_sync(server.ws_url, name)
                    await ws.close()

            started = time.perf_counter()
            with anyio.fail_after(300):
                async with anyio.create_task_group() as tg:
                    for name in names:
                        tg.start_soon(visit, name)
            took = time.perf_counter() - started

            async def settled() -> bool:
                state = (await http.get("/healthz")).json()
                return state["connections"] == 0 and state["rooms"] == docs

            await poll(settled, 60, "the clients to be gone")
            await anyio.sleep(0.5)
            rss_open = rss_kib(server.proc.pid)
        print(
            f"    rooms only: start {mib(rss_start)}; {docs} docs visited (connect+sync, "
            f"disconnect) in {took:.1f} s, all still loaded: {mib(rss_open)} = "
            f"+{mib(rss_open - rss_start)}, {(rss_open - rss_start) / docs:.0f} KiB per loaded doc"
        )
    finally:
        server.stop()

    # Clients stay connected until all docs are open; then leave, rooms unload after 1 s.
    server = ServerProcess(workdir, "--log-level", "warning", "--room-idle-seconds", "1").start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        async with httpx.AsyncClient(base_url=server.url) as http:

            async def health() -> dict[str, int]:
                return (await http.get("/healthz")).json()

            await anyio.sleep(0.5)
            rss_start = rss_kib(pid)
            print(f"    with connections, --room-idle-seconds 1: start {mib(rss_start)}")
            for round_no in (1, 2):
                sockets: list[Any] = []
                limiter = anyio.Semaphore(50)

                async def open_one(
                    name: str, sockets: list[Any] = sockets, limiter: Any = limiter
                ) -> None:
                    async with limiter:
                        ws, _ = await connect_and_sync(server.ws_url, name)
                        sockets.append(ws)

                started = time.perf_counter()
                with anyio.fail_after(300):
                    async with anyio.create_task_group() as tg:
                        for name in names:
                            tg.start_soon(open_one, name)
                took = time.perf_counter() - started
                state = await health()
                rss_open = rss_kib(pid)
                with anyio.fail_after(120):
                    async with anyio.create_task_group() as tg:
                        for ws in sockets:
                            tg.start_soon(ws.close)

                async def unloaded() -> bool:
                    return (await health())["rooms"] == 0

                started_unload = time.perf_counter()
                await poll(unloaded, 120, "every room to unload")
                unload_s = time.perf_counter() - started_unload
                await anyio.sleep(0.5)
                rss_after = rss_kib(pid)
                grown = rss_open - rss_start
                back = rss_open - rss_after
                print(
                    f"    round {round_no}: opened {docs} docs in {took:.1f} s "
                    f"(rooms={state['rooms']}, connections={state['connections']}): "
                    f"{mib(rss_open)} = +{mib(grown)} over start, "
                    f"{grown / docs:.0f} KiB per open doc (+ its connection)"
                )
                print(
                    f"             all unloaded {unload_s:.1f} s after the clients left: "
                    f"{mib(rss_after)}; returned {mib(back)} "
                    f"({100 * back / max(1, grown):.0f}% of the growth), "
                    f"{mib(rss_after - rss_start)} above start"
                )
    finally:
        server.stop()


# -- (c) durable HTTP writes -------------------------------------------------------------


async def bench_writes(workdir: Path, client_counts: list[int], seconds: float) -> None:
    print(f"(c) durable POST /docs/{{doc}}/update per second, {seconds:g} s per run")
    # All the writers are one anonymous actor on 127.0.0.1: past the default HTTP rate
    # limit (2,000 requests per 10 s) the rest of the runs would measure 429s.
    server = ServerProcess(
        workdir, "--log-level", "warning", "--rate-limit-http-requests", "0"
    ).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        port = port_of(server)
        for shared in (False, True):
            for clients in client_counts:
                latencies: list[float] = []
                errors: list[str] = []
                tag = f"{'shared' if shared else 'own'}-{clients}"

                async def client(
                    i: int,
                    tag: str = tag,
                    shared: bool = shared,
                    latencies: list[float] = latencies,
                    errors: list[str] = errors,
                ) -> None:
                    name = f"bench/w/{tag}" if shared else f"bench/w/{tag}/{i}"
                    doc = Doc()
                    doc["body"] = body = Text()
                    conn = await HttpConnection.open(port)
                    try:
                        deadline = time.perf_counter() + seconds
                        n = 0
                        while time.perf_counter() < deadline:
                            before = doc.get_state()
                            body.insert(len(body), f"c{i}-{n} ")
                            update = doc.get_update(before)
                            n += 1
                            sent = time.perf_counter()
                            status, reply = await conn.request(
                                "POST", f"/docs/{name}/update", update
                            )
                            if status == 200:
                                latencies.append(time.perf_counter() - sent)
                            else:
                                errors.append(f"{status} {reply[:100]!r}")
                    finally:
                        await conn.aclose()

                cpu0 = cpu_seconds(pid)
                own0 = time.process_time()
                started = time.perf_counter()
                with anyio.fail_after(seconds + 60):
                    async with anyio.create_task_group() as tg:
                        for i in range(clients):
                            tg.start_soon(client, i)
                elapsed = time.perf_counter() - started
                server_cpu = (cpu_seconds(pid) - cpu0) / elapsed * 100
                own_cpu = (time.process_time() - own0) / elapsed * 100
                ms = [x * 1000 for x in latencies] or [float("nan")]
                print(
                    f"    {'one doc ' if shared else 'own docs'} {clients:4d} clients: "
                    f"{len(latencies) / elapsed:7.0f} writes/s  p50 {pct(ms, 0.5):6.1f} ms  "
                    f"p99 {pct(ms, 0.99):6.1f} ms  server CPU {server_cpu:3.0f}%  "
                    f"client CPU {own_cpu:3.0f}%"
                    + (f"  errors {len(errors)}, first: {errors[0]}" if errors else "")
                )
    finally:
        server.stop()


# -- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # D open sockets here and in the server (it inherits the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        print(
            f"crdt-sync bench_docs ({'quick' if args.quick else 'full'}); "
            f"{os.cpu_count()} CPUs; data in {base}"
        )
        for sub, phase in [
            ("a", lambda d: bench_load(d, args.updates, args.samples)),
            ("b", lambda d: bench_memory(d, args.docs, args.doc_kib)),
            ("c", lambda d: bench_writes(d, args.clients, args.seconds)),
        ]:
            workdir = base / sub
            workdir.mkdir()
            started = time.perf_counter()
            await phase(workdir)
            print(f"    ({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--dir", default=None, help="where the databases go (default: /tmp)")
    parser.add_argument("--updates", type=int, help="logged updates for (a) (10000)")
    parser.add_argument("--samples", type=int, help="cold samples per case in (a) (3)")
    parser.add_argument("--docs", type=int, help="docs opened in (b) (1000)")
    parser.add_argument("--doc-kib", type=int, default=20, help="content per doc in (b)")
    parser.add_argument("--clients", help="comma-separated client counts for (c) (1,4,16,64)")
    parser.add_argument("--seconds", type=float, help="duration of each run in (c) (3)")
    args = parser.parse_args()
    defaults = (
        {"updates": 2000, "samples": 2, "docs": 100, "clients": "1,8", "seconds": 1.0}
        if args.quick
        else {"updates": 10_000, "samples": 3, "docs": 1000, "clients": "1,4,16,64", "seconds": 3.0}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.clients = [int(c) for c in str(args.clients).split(",")]
    if args.seconds > 60 or args.docs > 10_000 or args.updates > 200_000:
        parser.error("bounded: --seconds <= 60, --docs <= 10000, --updates <= 200000")
    anyio.run(run, args)


if __name__ == "__main__":
    main()
