"""Benchmark of the SyncFrame feed: mutations end to end, fan-out to frame subscribers.

Run on demand from the repository root (prints figures, asserts nothing; loopback only;
every phase bounded in time and count)::

    python bench/bench_frames.py [--quick] [--dir DIR] [--json PATH]

Each phase runs a fresh ``crdt-sync serve`` child process (``tests/server_process.py``)
on a fresh database; defaults: about 1.5 minutes in all, ``--quick`` about 20 s.

(a) Mutations per second end to end: N concurrent writers (``httpx.AsyncClient``, one
    keep-alive connection each) POST ``u`` mutations to ``/sync/v1/mutations`` on a set
    of records for a fixed time, one mutation per POST (single) or 50 per POST (batch),
    each waiting for its answer (= durable) before the next. Every mutation sets a unique
    ``p.n``; one WebSocket subscriber of ``/sync/v1/ws`` in a separate process notes when
    each frame arrives, giving the latency from just before the POST to the frame on the
    feed. Printed: mutations/s, HTTP latency per POST, POST -> frame latency per
    mutation, frames missing on the feed.
(b) Frames per second delivered to 100 WebSocket subscribers (plus a few SSE ones):
    writers drive mutations as fast as the server takes them, up to a count and a time
    limit; every subscriber must then receive every frame once, in sid order (counted,
    summed and checked strictly increasing per subscriber, against the sids the
    mutations were given). Printed: deliveries/s, delivery lag (frame ``at`` -> arrival),
    CPU of the server, of the driver and of the subscriber processes. The subscribers
    are spread over several processes (``--procs``) so that no single client event loop
    is what is measured; a process above 90% CPU is flagged.

The server's RSS (``VmRSS``) is read before and after each phase, and its log is
searched for warnings, errors and tracebacks. Use ``--dir`` to measure on the disk the server will
use: every mutation is fsync'd (group commit) before its answer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import httpx
import websockets

try:
    from orjson import loads
except ImportError:  # orjson only lightens the subscribers' load
    from json import loads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procstat import cpu_seconds, mib, rss_kib
from bench.worker_processes import WorkerProcesses
from tests.server_process import ServerProcess

HOST = "127.0.0.1"
T = "bench"
#: The frame WebSocket closes clients silent for --ping-timeout (30 s); clients ping.
PING_SECONDS = 10.0
#: How long subscribers keep listening once they have the last expected frame.
GRACE = 0.2


# -- process figures ---------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CpuMeter:
    """CPU% of some processes (and of this one) since :meth:`start`, of one core."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start()

    def start(self) -> None:
        self.at = time.monotonic()
        self.own = time.process_time()
        self.cpu = [cpu_seconds(p) for p in self.pids]

    def read(self, idle_tail: float = 0.0) -> tuple[float, list[float]]:
        """(this process, [each pid]); ``idle_tail`` seconds of waiting are not counted."""
        wall = max(1e-9, time.monotonic() - self.at - idle_tail)
        return (
            (time.process_time() - self.own) / wall * 100,
            [(cpu_seconds(p) - c) / wall * 100 for p, c in zip(self.pids, self.cpu, strict=True)],
        )


#: Every writer and subscriber is one anonymous actor on 127.0.0.1: with the default
#: per-address limits (2,000 HTTP requests per 10 s, 1,000 sockets) the runs after the
#: first few seconds would measure 429s, not the feed.
SERVE_ARGS = (
    "--log-level",
    "warning",
    "--rate-limit-http-requests",
    "0",
    "--max-connections-per-ip",
    "100000",
    "--max-connections-per-actor",
    "100000",
)


def log_problems(server: ServerProcess) -> list[str]:
    """Lines of the server's log (stderr, --log-level warning): warnings, errors, tracebacks."""
    words = ("WARNING", "ERROR", "CRITICAL", "Traceback")
    return [line for line in server.log().splitlines() if any(w in line for w in words)]


# -- subscribers (run in child processes) -------------------------------------------------


@dataclass
class SubState:
    """What one subscriber saw since the last report."""

    kind: str
    frames: int = 0
    messages: int = 0
    sid_sum: int = 0
    sid_sq: int = 0
    last_sid: int = 0
    not_increasing: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    closed: str = ""
    errors: list[str] = field(default_factory=list)

    def take(
        self,
        frames: list[dict[str, Any]],
        now: float,
        track: dict[str, float] | None,
        lags: list[float] | None,
    ) -> None:
        if not frames:
            return
        self.messages += 1
        if not self.first_at:
            self.first_at = now
        self.last_at = now
        for frame in frames:
            sid = frame["sid"]
            if sid <= self.last_sid:
                self.not_increasing += 1
            else:
                self.last_sid = sid
            self.frames += 1
            self.sid_sum += sid
            self.sid_sq += sid * sid
            if track is not None:
                n = frame["p"].get("n")
                if n is not None:
                    track[n] = now
        if lags is not None:
            lags.append(time.time() * 1000 - frames[-1]["at"])

    def report(self) -> dict[str, Any]:
        out = asdict(self)
        fresh = SubState(self.kind, last_sid=self.last_sid, closed=self.closed)
        self.__dict__.update(fresh.__dict__)
        return out


async def ws_subscriber(
    url: str,
    state: SubState,
    track: dict[str, float] | None,
    lags: list[float] | None,
    ready: anyio.Event,
) -> None:
    try:
        async with websockets.connect(url, max_size=None) as ws:
            ready.set()
            async with anyio.create_task_group() as tg:

                async def pinger() -> None:
                    while True:
                        await anyio.sleep(PING_SECONDS)
                        await ws.send('{"type":"ping"}')

                tg.start_soon(pinger)
                async for message in ws:
                    now = time.monotonic()
                    data = loads(message)
                    if isinstance(data, list):
                        state.take(data, now, track, lags)
                    elif data.get("type") == "error":
                        state.errors.append(f"{data.get('error')}: {data.get('detail')}")
                tg.cancel_scope.cancel()
            state.closed = f"closed by server: {ws.close_code} {ws.close_reason}"
    except websockets.ConnectionClosed as exc:
        state.closed = f"connection closed: {exc}"
    except OSError as exc:
        state.closed = f"cannot connect: {exc}"
    finally:
        ready.set()


async def sse_subscriber(
    url: str, state: SubState, lags: list[float] | None, ready: anyio.Event
) -> None:
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                state.closed = f"HTTP {response.status_code}"
                return
            ready.set()
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = loads(line[5:])
                    if event:
                        state.errors.append(f"{event}: {data}")
                    else:
                        state.take([data], time.monotonic(), None, lags)
                elif not line:
                    event = ""
            state.closed = "stream ended by server"
    except httpx.HTTPError as exc:
        state.closed = f"SSE error: {exc!r}"
    finally:
        ready.set()


async def _worker_main(
    base: str, since: int, n_ws: int, n_sse: int, track: bool, pipe: Connection
) -> None:
    ws_url = base.replace("http://", "ws://", 1) + f"/sync/v1/ws?since={since}"
    sse_url = base + f"/sync/v1/events?since={since}"
    states = [SubState("ws") for _ in range(n_ws)] + [SubState("sse") for _ in range(n_sse)]
    for state in states:
        state.last_sid = since
    arrivals: dict[str, float] | None = {} if track else None
    lags: list[float] = []
    async with anyio.create_task_group() as tg:
        readies = []
        for i, state in enumerate(states):
            ready = anyio.Event()
            readies.append(ready)
            if state.kind == "ws":
                tg.start_soon(
                    ws_subscriber, ws_url, state, arrivals if i == 0 else None, lags, ready
                )
            else:
                tg.start_soon(sse_subscriber, sse_url, state, lags, ready)
            if i % 20 == 19:
                await anyio.sleep(0.01)  # do not stampede the accept queue
        with anyio.move_on_after(30):
            for ready in readies:
                await ready.wait()
        pipe.send(("ready", sum(1 for s in states if not s.closed)))
        while True:
            command = await anyio.to_thread.run_sync(pipe.recv)
            if command[0] == "stop":
                break
            _, final_sid, timeout = command
            with anyio.move_on_after(timeout):
                while not all(s.last_sid >= final_sid or s.closed for s in states):
                    await anyio.sleep(0.01)
            await anyio.sleep(GRACE)  # anything after the last expected frame is extra
            reports = [s.report() for s in states]
            pipe.send(("result", reports, dict(arrivals or {}), list(lags)))
            if arrivals is not None:
                arrivals.clear()
            lags.clear()
        tg.cancel_scope.cancel()


def subscriber_worker(
    base: str, since: int, n_ws: int, n_sse: int, track: bool, pipe: Connection
) -> None:
    """Child process: ``n_ws`` WebSocket and ``n_sse`` SSE subscribers from ``since``."""
    anyio.run(_worker_main, base, since, n_ws, n_sse, track, pipe)


class Subscribers(WorkerProcesses):
    """Subscriber processes, driven over pipes: start, collect after each run, stop."""

    def __init__(self, base: str, since: int, split: list[tuple[int, int]], track: bool):
        arg_lists = [(base, since, n_ws, n_sse, track) for n_ws, n_sse in split]
        super().__init__(subscriber_worker, arg_lists, "subscriber")

    async def collect(self, final_sid: int, timeout: float) -> tuple[list[dict], dict, list]:
        """Every subscriber's report once it has ``final_sid`` (or ``timeout`` passed)."""
        for pipe in self.pipes:
            pipe.send(("expect", final_sid, timeout))
        reports: list[dict] = []
        arrivals: dict[str, float] = {}
        lags: list[float] = []
        for pipe in self.pipes:
            _, rep, arr, lag = await self._recv(pipe, timeout + 30)
            reports += rep
            arrivals.update(arr)
            lags += lag
        return reports, arrivals, lags


# -- writers -------------------------------------------------------------------------------


def mutation(record: int, n: str) -> dict[str, Any]:
    return {"t": T, "id": f"r{record}", "op": "u", "p": {"n": n}}


async def create_records(http: httpx.AsyncClient, count: int) -> int:
    """Insert records ``bench/r0..`` (100 per POST); returns the newest sid."""
    newest = 0
    for start in range(0, count, 100):
        body = {
            "mutations": [
                {"t": T, "id": f"r{i}", "op": "i", "p": {"status": "open", "n": "init"}}
                for i in range(start, min(count, start + 100))
            ]
        }
        response = await http.post("/sync/v1/mutations", json=body)
        response.raise_for_status()
        for result in response.json()["results"]:
            if result["status"] != 201:
                raise RuntimeError(f"cannot create the records: {result}")
            newest = max(newest, result["sid"])
    return newest


@dataclass
class WriteRun:
    posts: list[float] = field(default_factory=list)  # seconds per POST
    sent: dict[str, float] = field(default_factory=dict)  # n -> monotonic before the POST
    sids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mutations: int = 0
    started: float = 0.0  # monotonic, first POST
    elapsed: float = 0.0  # first POST to the last answer


async def drive(
    base: str,
    writers: int,
    per_post: int,
    records: int,
    seconds: float,
    limit: int,
    tag: str,
    on_start: Callable[[], None],
) -> WriteRun:
    """``writers`` concurrent loops of POST (``per_post`` ``u`` mutations), each waiting
    for its answer; until ``seconds`` passed or ``limit`` mutations were sent.
    ``on_start`` is called once the connections are open, just before the first POST."""
    run = WriteRun()
    # One client (one keep-alive connection) per writer: a single httpx pool shared by
    # dozens of concurrent requests costs the client more CPU than the server spends.
    clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(writers)]

    async def writer(w: int, http: httpx.AsyncClient) -> None:
        seq = 0
        while time.monotonic() < deadline and run.mutations < limit:
            names = [f"{tag}{w}-{seq + k}" for k in range(per_post)]
            body = {
                "mutations": [
                    mutation((w * 7919 + seq + k) % records, n) for k, n in enumerate(names)
                ]
            }
            seq += per_post
            run.mutations += per_post
            sent = time.monotonic()
            for n in names:
                run.sent[n] = sent
            try:
                response = await http.post("/sync/v1/mutations", json=body)
            except httpx.HTTPError as exc:
                run.errors.append(f"{exc!r}")
                continue
            run.posts.append(time.monotonic() - sent)
            if response.status_code != 200:
                run.errors.append(f"HTTP {response.status_code} {response.text[:200]}")
                continue
            for result in response.json()["results"]:
                if result["status"] == 200 and result["sid"] is not None:
                    run.sids.append(result["sid"])
                else:
                    run.errors.append(json.dumps(result)[:200])

    try:
        # Open the connections first so the first POSTs do not pay for TCP handshakes.
        async with anyio.create_task_group() as tg:
            for http in clients:
                tg.start_soon(http.get, "/healthz")
        on_start()
        started = run.started = time.monotonic()
        deadline = started + seconds
        with anyio.fail_after(seconds + 120):
            async with anyio.create_task_group() as tg:
                for w, http in enumerate(clients):
                    tg.start_soon(writer, w, http)
        run.elapsed = time.monotonic() - started
    finally:
        for http in clients:
            await http.aclose()
    return run


async def prepare(server: ServerProcess, records: int) -> tuple[int, int]:
    """The started server's pid, after creating ``records`` records; and the newest sid."""
    assert server.proc is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        newest = await create_records(http, records)
    return server.proc.pid, newest


# -- (a) mutations end to end --------------------------------------------------------------


async def bench_mutations(workdir: Path, args: argparse.Namespace, out: dict) -> None:
    print(
        f"(a) POST /sync/v1/mutations (u) -> frame on a WS subscriber; {args.records} "
        f"records, {args.seconds_a:g} s per run"
    )
    rows: list[dict[str, Any]] = []
    server = ServerProcess(workdir, *SERVE_ARGS).start()
    subs: Subscribers | None = None
    try:
        pid, newest = await prepare(server, args.records)
        rss_before = rss_kib(pid)
        subs = Subscribers(server.url, newest, [(1, 0)], track=True)
        if await subs.ready() != 1:
            raise RuntimeError("the WS subscriber did not connect")
        runs = [("single", w, 1) for w in args.writers] + [
            ("batch", w, args.batch) for w in args.batch_writers
        ]
        for i, (mode, writers, per_post) in enumerate(runs):
            meter = CpuMeter([pid, subs.pids[0]])
            run = await drive(
                server.url,
                writers,
                per_post,
                args.records,
                args.seconds_a,
                10**9,
                f"a{i}.",
                meter.start,
            )
            final = max(run.sids, default=newest)
            reports, arrivals, _ = await subs.collect(final, timeout=30)
            writer_cpu, (server_cpu, sub_cpu) = meter.read(idle_tail=GRACE)
            newest = max(newest, final)
            done = len(run.sids)
            e2e = [(arrivals[n] - t) * 1000 for n, t in run.sent.items() if n in arrivals]
            http_ms = [x * 1000 for x in run.posts]
            report = reports[0]
            row = {
                "mode": mode,
                "writers": writers,
                "per_post": per_post,
                "mutations": done,
                "mutations_per_s": done / run.elapsed,
                "http_p50_ms": pct(http_ms, 0.5),
                "http_p99_ms": pct(http_ms, 0.99),
                "frame_p50_ms": pct(e2e, 0.5),
                "frame_p99_ms": pct(e2e, 0.99),
                "frames_seen": report["frames"],
                "frames_missing": done - len(arrivals),
                "not_increasing": report["not_increasing"],
                "errors": len(run.errors),
                "server_cpu_pct": server_cpu,
                "writer_cpu_pct": writer_cpu,
                "subscriber_cpu_pct": sub_cpu,
            }
            rows.append(row)
            flags = ""
            if row["frames_missing"] or row["not_increasing"] or report["frames"] != done:
                flags += (
                    f"  !! feed: {report['frames']} frames for {done} mutations, "
                    f"{row['frames_missing']} missing, {row['not_increasing']} out of order"
                )
            if report["closed"] or report["errors"]:
                flags += f"  !! subscriber: {report['closed']} {report['errors'][:3]}"
            if run.errors:
                flags += f"  !! {len(run.errors)} errors, first: {run.errors[0]}"
            print(
                f"    {mode:6s} {writers:3d} writers x{per_post:<3d} {row['mutations_per_s']:7.0f} "
                f"mut/s  HTTP p50 {row['http_p50_ms']:6.1f} p99 {row['http_p99_ms']:6.1f} ms  "
                f"POST->frame p50 {row['frame_p50_ms']:6.1f} p99 {row['frame_p99_ms']:6.1f} ms  "
                f"server CPU {row['server_cpu_pct']:3.0f}%  writers CPU "
                f"{row['writer_cpu_pct']:3.0f}%"
                + ("  !! the writers are near a full core" if writer_cpu > 90 else "")
                + flags
            )
        rss_after = rss_kib(pid)
    finally:
        if subs is not None:
            subs.stop()
        server.stop()
    problems = log_problems(server)
    print(f"    server RSS {mib(rss_before)} before, {mib(rss_after)} after")
    if problems:
        print(f"    !! server log: {len(problems)} warning/error lines, first: {problems[0]}")
    out["a"] = {
        "rows": rows,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "server_log_errors": problems[:20],
    }


# -- (b) fan-out to frame subscribers ------------------------------------------------------


def split_subscribers(ws: int, sse: int, procs: int) -> list[tuple[int, int]]:
    return [
        (ws // procs + (1 if p < ws % procs else 0), sse // procs + (1 if p < sse % procs else 0))
        for p in range(procs)
    ]


async def bench_fanout(workdir: Path, args: argparse.Namespace, out: dict) -> None:
    split = split_subscribers(args.subscribers, args.sse, args.procs)
    print(
        f"(b) frames delivered to {args.subscribers} WS + {args.sse} SSE subscribers "
        f"in {args.procs} processes ({', '.join(f'{w}+{s}' for w, s in split)}); "
        f"<= {args.seconds_b:g} s and <= {args.limit_b} mutations per run"
    )
    rows: list[dict[str, Any]] = []
    server = ServerProcess(workdir, *SERVE_ARGS).start()
    subs: Subscribers | None = None
    try:
        pid, newest = await prepare(server, args.records)
        rss_before = rss_kib(pid)
        subs = Subscribers(server.url, newest, split, track=False)
        connected = await subs.ready()
        async with httpx.AsyncClient(base_url=server.url) as http:
            metrics = (await http.get("/metrics")).text
        counted = next(
            (
                line.rsplit(" ", 1)[1]
                for line in metrics.splitlines()
                if line.startswith('crdt_sync_connections{kind="frames"}')
            ),
            "?",
        ).removesuffix(".0")
        rss_connected = rss_kib(pid)
        print(
            f"    {connected} subscribers connected (server metrics: {counted} frame "
            f"subscribers); server RSS {mib(rss_before)} -> {mib(rss_connected)}"
        )
        for i, (writers, per_post) in enumerate(args.drives):
            meter = CpuMeter([pid, *subs.pids])
            run = await drive(
                server.url,
                writers,
                per_post,
                args.records,
                args.seconds_b,
                args.limit_b,
                f"b{i}.",
                meter.start,
            )
            final = max(run.sids, default=newest)
            expected = len(run.sids)
            expected_sum = sum(run.sids)
            expected_sq = sum(s * s for s in run.sids)
            reports, _, lags = await subs.collect(final, timeout=60)
            driver_cpu, (server_cpu, *sub_cpu) = meter.read(idle_tail=GRACE)
            newest = max(newest, final)
            last_at = max((r["last_at"] for r in reports), default=time.monotonic())
            span = max(last_at - run.started, 1e-9)
            delivered = sum(r["frames"] for r in reports)
            bad = [
                r
                for r in reports
                if r["frames"] != expected
                or r["sid_sum"] != expected_sum
                or r["sid_sq"] != expected_sq
                or r["not_increasing"]
            ]
            missing = sum(max(0, expected - r["frames"]) for r in reports)
            extra = sum(max(0, r["frames"] - expected) for r in reports)
            closed = [r["closed"] for r in reports if r["closed"]]
            row = {
                "writers": writers,
                "per_post": per_post,
                "mutations": expected,
                "drive_s": run.elapsed,
                "mutations_per_s": expected / run.elapsed,
                "subscribers": len(reports),
                "deliveries": delivered,
                "deliveries_per_s": delivered / span,
                "drain_s": max(0.0, last_at - run.started - run.elapsed),
                "messages_per_sub": statistics.mean(r["messages"] for r in reports),
                "lag_p50_ms": pct(lags, 0.5),
                "lag_p99_ms": pct(lags, 0.99),
                "subscribers_wrong": len(bad),
                "frames_missing": missing,
                "frames_extra": extra,
                "not_increasing": sum(r["not_increasing"] for r in reports),
                "subscribers_closed": len(closed),
                "errors": len(run.errors),
                "server_cpu_pct": server_cpu,
                "driver_cpu_pct": driver_cpu,
                "subscriber_proc_cpu_pct": sub_cpu,
                "rss_after_kib": rss_kib(pid),
            }
            rows.append(row)
            print(
                f"    {writers:2d} writers x{per_post:<3d} {expected:6d} mutations in "
                f"{run.elapsed:4.1f} s ({row['mutations_per_s']:5.0f}/s): "
                f"{row['deliveries_per_s']:8.0f} deliveries/s, drained "
                f"{row['drain_s']:.2f} s after the last answer, "
                f"{row['messages_per_sub']:.0f} messages per subscriber; lag p50 "
                f"{row['lag_p50_ms']:.0f} p99 {row['lag_p99_ms']:.0f} ms"
            )
            print(
                f"       server CPU {server_cpu:3.0f}%, driver CPU {driver_cpu:3.0f}%, "
                f"subscriber processes {', '.join(f'{c:.0f}%' for c in sub_cpu)}; server RSS "
                f"{mib(row['rss_after_kib'])}"
                + ("  !! a subscriber process is near a full core" if max(sub_cpu) > 90 else "")
                + ("  !! the driver is near a full core" if driver_cpu > 90 else "")
            )
            if bad or closed or run.errors:
                print(
                    f"       !! {len(bad)} subscribers wrong: {missing} frames missing, {extra} "
                    f"extra, {row['not_increasing']} out of order; {len(closed)} closed "
                    f"{closed[:2]}; {len(run.errors)} write errors {run.errors[:1]}"
                )
            else:
                print(
                    f"       every subscriber got all {expected} frames once, sids strictly "
                    "increasing"
                )
        rss_after = rss_kib(pid)
    finally:
        if subs is not None:
            subs.stop()
        server.stop()
    problems = log_problems(server)
    print(
        f"    server RSS {mib(rss_before)} before, {mib(rss_connected)} with the subscribers, "
        f"{mib(rss_after)} after"
    )
    if problems:
        print(f"    !! server log: {len(problems)} warning/error lines, first: {problems[0]}")
    out["b"] = {
        "split": split,
        "rows": rows,
        "rss_before_kib": rss_before,
        "rss_connected_kib": rss_connected,
        "rss_after_kib": rss_after,
        "server_log_errors": problems[:20],
    }


# -- summary -------------------------------------------------------------------------------


def print_table(out: dict) -> None:
    print()
    if "a" in out:
        print("(a) mutations end to end (one WS subscriber)")
        print(
            f"  {'mode':6s} {'writers':>7s} {'/POST':>5s} {'mut/s':>7s} {'HTTP p50':>9s} "
            f"{'p99':>7s} {'->frame p50':>11s} {'p99':>7s} {'missing':>7s} {'srv CPU':>7s} "
            f"{'cli CPU':>7s}"
        )
        for r in out["a"]["rows"]:
            print(
                f"  {r['mode']:6s} {r['writers']:7d} {r['per_post']:5d} "
                f"{r['mutations_per_s']:7.0f} {r['http_p50_ms']:7.1f}ms {r['http_p99_ms']:5.1f}ms "
                f"{r['frame_p50_ms']:9.1f}ms {r['frame_p99_ms']:5.1f}ms {r['frames_missing']:7d} "
                f"{r['server_cpu_pct']:6.0f}% "
                f"{r['writer_cpu_pct'] + r['subscriber_cpu_pct']:6.0f}%"
            )
        a = out["a"]
        print(f"  server RSS {mib(a['rss_before_kib'])} -> {mib(a['rss_after_kib'])}")
    if "b" in out:
        b = out["b"]
        subs = b["rows"][0]["subscribers"] if b["rows"] else 0
        print(f"(b) fan-out to {subs} subscribers in {len(b['split'])} processes")
        print(
            f"  {'writers':>7s} {'/POST':>5s} {'mut/s':>6s} {'deliveries/s':>12s} "
            f"{'lag p50':>7s} {'p99':>7s} {'drain':>6s} {'wrong':>5s} {'srv CPU':>7s} "
            f"{'driver':>6s} {'subscriber procs':>16s}"
        )
        for r in b["rows"]:
            procs = "+".join(f"{c:.0f}" for c in r["subscriber_proc_cpu_pct"]) + "%"
            print(
                f"  {r['writers']:7d} {r['per_post']:5d} {r['mutations_per_s']:6.0f} "
                f"{r['deliveries_per_s']:12.0f} {r['lag_p50_ms']:5.0f}ms {r['lag_p99_ms']:5.0f}ms "
                f"{r['drain_s']:5.2f}s {r['subscribers_wrong']:5d} {r['server_cpu_pct']:6.0f}% "
                f"{r['driver_cpu_pct']:5.0f}% {procs:>16s}"
            )
        print(
            f"  server RSS {mib(b['rss_before_kib'])} -> {mib(b['rss_connected_kib'])} "
            f"(subscribers connected) -> {mib(b['rss_after_kib'])}"
        )


# -- main ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out: dict[str, Any] = {
        "bench": "bench_frames",
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-frames-") as tmp:
        base = Path(tmp)
        print(
            f"crdt-sync bench_frames ({out['mode']}); {os.cpu_count()} CPUs (server, writers "
            f"and subscribers share them); data in {base}"
        )
        for sub, phase in [("a", bench_mutations), ("b", bench_fanout)]:
            if sub not in args.phases:
                continue
            workdir = base / sub
            workdir.mkdir()
            started = time.monotonic()
            await phase(workdir, args, out)
            print(f"    ({time.monotonic() - started:.0f} s)")
    out["total_s"] = time.monotonic() - began
    print_table(out)
    print(f"total {out['total_s']:.0f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 30 s")
    parser.add_argument("--dir", default=None, help="where the databases go (default: /tmp)")
    parser.add_argument("--json", default=None, metavar="PATH", help="save the results here")
    parser.add_argument("--phases", default="ab", help="which phases to run (default: ab)")
    parser.add_argument("--records", type=int, default=200, help="records written to (200)")
    parser.add_argument("--writers", help="writer counts of (a), single mode (1,8,32)")
    parser.add_argument("--batch-writers", help="writer counts of (a), batch mode (1,8)")
    parser.add_argument("--batch", type=int, default=50, help="mutations per POST, batch (50)")
    parser.add_argument("--seconds-a", type=float, help="duration of each run of (a) (8)")
    parser.add_argument("--subscribers", type=int, default=100, help="WS subscribers in (b)")
    parser.add_argument("--sse", type=int, default=4, help="SSE subscribers in (b) (4)")
    parser.add_argument("--procs", type=int, help="subscriber processes in (b) (CPUs, 2..4)")
    parser.add_argument(
        "--drives", help="(b) runs as WRITERSxPER_POST, comma-separated (32x1,32x10)"
    )
    parser.add_argument("--seconds-b", type=float, help="time limit of each run of (b) (15)")
    parser.add_argument("--limit-b", type=int, help="mutation limit of each run of (b) (30000)")
    args = parser.parse_args()
    defaults = (
        {
            "writers": "1,8",
            "batch_writers": "4",
            "seconds_a": 2.0,
            "drives": "32x10",
            "seconds_b": 4.0,
            "limit_b": 5000,
        }
        if args.quick
        else {
            "writers": "1,8,32",
            "batch_writers": "1,8",
            "seconds_a": 8.0,
            "drives": "32x1,32x10",
            "seconds_b": 15.0,
            "limit_b": 30_000,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.procs is None:
        args.procs = max(2, min(4, os.cpu_count() or 2))
    args.writers = [int(c) for c in str(args.writers).split(",") if c]
    args.batch_writers = [int(c) for c in str(args.batch_writers).split(",") if c]
    args.drives = [tuple(int(x) for x in d.split("x")) for d in str(args.drives).split(",")]
    if (
        args.seconds_a > 60
        or args.seconds_b > 60
        or args.limit_b > 200_000
        or args.subscribers + args.sse > 2000
        or args.batch > 1000
        or not 1 <= args.procs <= 32
    ):
        parser.error(
            "bounded: --seconds-* <= 60, --limit-b <= 200000, <= 2000 subscribers, "
            "--batch <= 1000, 1 <= --procs <= 32"
        )
    out = anyio.run(run, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"results saved to {args.json}")


if __name__ == "__main__":
    main()
