"""Side-by-side benchmark: crdt-sync vs stock pycrdt-websocket vs @y/websocket-server 0.1.1.

Run from the repository root (loopback only; every phase bounded in count and time)::

    pip install -r bench/requirements.txt        # matplotlib, for the chart
    (cd bench && npm ci)                         # pinned yjs, ws, @y/websocket-server
    python bench/compare.py --quick              # smoke run, ~1-2 minutes
    python bench/compare.py                      # full run, ~10-15 minutes
    python bench/compare.py --servers crdt-sync,node --scenarios a,c,e
    python bench/compare.py --deflate            # clients offer permessage-deflate (browsers do)
    python bench/compare.py --servers crdt-sync,node --scenarios acd --repeat 5  # medians, spread
    python bench/compare.py --servers crdt-sync,node,node-leveldb --scenarios ac  # + a storing Node
    python bench/compare.py --servers crdt-sync --scenarios c --workers 2  # on PostgreSQL + Redis
    python bench/compare.py --report bench/results/compare-<stamp>-full.json  # table + chart again

(``npm ci`` is run for you when bench/node_modules is missing.)

Each server is started in turn on 127.0.0.1, a fresh process for every scenario:
``crdt-sync`` (``python -m crdt_sync serve``, endpoint ``/yjs/<room>``), ``pycrdt``
(stock pycrdt-websocket 0.16 on hypercorn, ``bench/ref_pycrdt_server.py``, ``/<room>``)
and ``node`` (``y-websocket-server`` bin of @y/websocket-server 0.1.1, ``/<room>``);
``node-leveldb`` is that server with its LevelDB persistence on (``YPERSISTENCE``), the
like-for-like reference for a server that stores every update.
The load comes from ``bench/load/loadgen.mjs``: raw ``ws`` sockets speaking the
y-websocket protocol, writers sending genuine Yjs updates (``yjs``) that carry a marker
with a send timestamp, receivers without a Y.Doc that scan relayed bytes for it.
Server CPU (utime+stime) and RSS (VmRSS) are read from /proc for the server process tree.

Scenarios:
  a  many rooms fan-out: 50 rooms x 10 clients, 1 writer/room at 10 updates/s
  b  one big room: 1 room x 200 clients, 1 writer at 20 updates/s
  c  saturation: 200 rooms x 10 clients, the writers' rate raised step by step until
     p99 > 100 ms or any loss (a failed step is run once more; a second failure ends the
     ladder); highest sustained deliveries/s, and p50/p99 at 18,000/s (rate 10/s, run
     even when the ladder ended below it)
  d  server CPU-seconds per 1,000 deliveries (from a, and from c at 18,000/s)
  e  RSS per idle connection (1,000 clients over 50 already open rooms)
  f  RSS per loaded ~20 KB doc (500 docs, each written by its own client that stays
     connected), and RSS once the clients left (crdt-sync runs with --room-idle-seconds 1
     and unloads; pycrdt-websocket drops a room with its last client; y-websocket-server
     keeps every doc in memory when it has no persistence); then a second round with 500
     other docs: RSS growing again means memory that is not reused
  g  cold open of a doc with 10,000 logged updates: from connect to the doc's content,
     then again after compaction (crdt-sync: SQLite; node: YPERSISTENCE=y-leveldb;
     pycrdt-websocket: no persistence, not measured)

"Deliveries" are relayed updates that reached a receiver other than the writer (the
references also echo each update to its writer; crdt-sync does not). Ratios are
crdt-sync / reference. The machine's cores are shared with the load generator (its CPU
is reported), so compare ratios rather than absolute figures. Results: a JSON file and
a PNG chart under bench/results/ (``--out`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # tests/ holds the throwaway-database helper
    sys.path.insert(0, str(ROOT))
LOADGEN = BENCH / "load" / "loadgen.mjs"
NODE_SERVER_BIN = BENCH / "node_modules" / ".bin" / "y-websocket-server"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVER_NAMES = {
    "crdt-sync": "crdt-sync",
    "pycrdt": "pycrdt-websocket",
    "node": "y-websocket-server",
    # The same Node server with its LevelDB persistence on (YPERSISTENCE): it stores
    # every update as crdt-sync does (y-leveldb, without an fsync per write).
    "node-leveldb": "y-websocket-server+leveldb",
}
#: The short name of a reference in ratio columns (crdt/<name>).
REF_LABELS = {"pycrdt": "pycrdt", "node": "node", "node-leveldb": "node+leveldb"}
ALIASES = {
    "crdt-sync": "crdt-sync",
    "crdt": "crdt-sync",
    "pycrdt": "pycrdt",
    "pycrdt-websocket": "pycrdt",
    "node": "node",
    "y-websocket-server": "node",
    "node-leveldb": "node-leveldb",
    "y-websocket-server+leveldb": "node-leveldb",
}
SCENARIOS = "abcdefg"


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


#: --workers / --shared-store: crdt-sync runs on a throwaway PostgreSQL database of this
#: machine and its Redis (a key prefix of its own), with this many worker processes.
WORKERS = 1
SHARED_STORE = False


@contextlib.contextmanager
def shared_store() -> Iterator[list[str]]:
    """A fresh database (dropped afterwards) and Redis prefix: the flags of one server.

    The tests' own helpers make them (``CRDT_SYNC_TEST_POSTGRES``, ``CRDT_SYNC_TEST_REDIS``
    say where the machine's PostgreSQL and Redis are).
    """
    from tests.cluster import REDIS_URL, throwaway_database

    with throwaway_database("crdt_sync_bench") as url:
        yield [
            "--database-url", url,
            "--redis-url", REDIS_URL,
            "--redis-prefix", url.rsplit("/", 1)[1],
            "--workers", str(WORKERS),
        ]  # fmt: skip


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    pids, todo = [], [pid]
    while todo and len(pids) < 1000:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids


@dataclass
class Server:
    """One server under test, started as a child process and waited on by its ready line."""

    kind: str  # crdt-sync | pycrdt | node
    workdir: Path
    args: list[str] = field(default_factory=list)
    persist: bool = False
    proc: subprocess.Popen[str] | None = None
    http_url: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return SERVER_NAMES[self.kind]

    @property
    def ws_base(self) -> str:
        ws = self.http_url.replace("http://", "ws://", 1)
        return ws + "/yjs" if self.kind == "crdt-sync" else ws

    @property
    def healthz(self) -> str | None:
        return self.http_url + "/healthz" if self.kind == "crdt-sync" else None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def command(self) -> tuple[list[str], dict[str, str], re.Pattern[str]]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.kind == "crdt-sync":
            cmd = [
                sys.executable,
                "-m",
                "crdt_sync",
                "serve",
                "--host",
                HOST,
                "--port",
                "0",
                "--db",
                str(self.workdir / "crdt-sync.db"),
                "--log-level",
                "warning",
                # Every load client comes from 127.0.0.1 as one anonymous actor: the
                # per-address bounds (1,000 sockets, 10,000 messages per 10 s) would close
                # scenario c's 2,000 sockets and 2,000 updates/s with 4429. The
                # references have no such limits.
                "--max-connections-per-ip",
                "100000",
                "--max-connections-per-actor",
                "100000",
                "--rate-limit-ws-messages",
                "0",
                *self.args,
            ]
            return cmd, env, re.compile(r"crdt-sync ready on (http://\S+)")
        if self.kind == "pycrdt":
            cmd = [
                sys.executable,
                str(BENCH / "ref_pycrdt_server.py"),
                "--host",
                HOST,
                "--port",
                "0",
            ]
            return cmd, env, re.compile(r"ref-pycrdt ready on (http://\S+)")
        env.update(HOST=HOST, PORT=str(free_port()))
        if self.persist or self.kind == "node-leveldb":
            env["YPERSISTENCE"] = str(self.workdir / "leveldb")
        return [str(NODE_SERVER_BIN)], env, re.compile(r"running at '([^']+)' on port (\d+)")

    def start(self, timeout: float = 30.0) -> Server:
        cmd, env, ready = self.command()
        self.lines = []
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=self.workdir
            )
        found: list[str] = []
        event = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                match = ready.search(line)
                if match and not found:
                    groups = match.groups()
                    found.append(groups[0] if len(groups) == 1 else f"http://{HOST}:{groups[1]}")
                    event.set()
            event.set()

        threading.Thread(target=pump, daemon=True).start()
        if not event.wait(timeout) or not found:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"{self.name} not ready within {timeout} s: {self.log_tail()}")
        self.http_url = found[0]
        port = int(self.http_url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ready line printed: make sure it accepts too
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
                break
            time.sleep(0.05)
        return self

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def running(kind: str, workdir: Path, *args: str, persist: bool = False) -> Iterator[Server]:
    if kind == "crdt-sync" and SHARED_STORE:
        with shared_store() as flags, running_server(kind, workdir, *args, *flags) as server:
            yield server
        return
    with running_server(kind, workdir, *args, persist=persist) as server:
        yield server


@contextlib.contextmanager
def running_server(kind: str, workdir: Path, *args: str, persist: bool = False) -> Iterator[Server]:
    server = Server(kind, workdir, list(args), persist).start()
    try:
        yield server
    finally:
        server.stop()


# -- load generator -----------------------------------------------------------------------


DEFLATE = False  # --deflate: clients offer permessage-deflate, as browsers do


def loadgen(server: Server, cfg: dict[str, Any], timeout: float, verbose: bool) -> dict[str, Any]:
    """Run one load generator phase against ``server``; returns its result object."""
    cfg = {
        "deflate": DEFLATE,
        "base": server.ws_base,
        "pids": server.pids(),
        "clk_tck": CLK_TCK,
        "deadline_s": timeout,
        **cfg,
    }
    proc = subprocess.Popen(
        ["node", str(LOADGEN), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=BENCH,
    )
    watchdog = threading.Timer(timeout + 15, proc.kill)
    watchdog.start()
    result: dict[str, Any] | None = None
    error = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "log" in msg and verbose:
                print(f"      {server.name}: {msg['log']}", flush=True)
            elif "result" in msg:
                result = msg["result"]
            elif "error" in msg:
                error = msg["error"]
        proc.wait(10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if result is None:
        stderr = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"load generator failed: {error or stderr[-800:]}")
    if proc.stderr:
        proc.stderr.close()
    return result


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool

    def q(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def scenario_fanout(
    kind: str, tmp: Path, plan: Plan, verbose: bool, rooms: int, clients: int, rate: float
) -> dict[str, Any]:
    duration = plan.q(20.0, 2.5)
    with running(kind, tmp) as server:
        res = loadgen(
            server,
            {
                "mode": "fanout",
                "prefix": f"fan{rooms}x{clients}",
                "rooms": rooms,
                "clients": clients,
                "steps": [{"rate": rate, "duration": duration, "drain": 5}],
            },
            timeout=120,
            verbose=verbose,
        )
        res["server_alive"] = server.alive()
    return res


def scenario_a(kind: str, tmp: Path, plan: Plan, verbose: bool) -> dict[str, Any]:
    return scenario_fanout(kind, tmp, plan, verbose, rooms=50, clients=10, rate=10)


def scenario_b(kind: str, tmp: Path, plan: Plan, verbose: bool) -> dict[str, Any]:
    return scenario_fanout(kind, tmp, plan, verbose, rooms=1, clients=200, rate=20)


def scenario_c(kind: str, tmp: Path, plan: Plan, verbose: bool) -> dict[str, Any]:
    # 200 writers: deliveries/s = 200 x 9 receivers x rate, 18,000/s at rate 10
    rates = plan.q(
        [1, 2.5, 5, 7.5, 10, 12.5, 15, 17.5, 20, 25, 30, 35, 40, 50, 60, 70, 80, 100, 120],
        [5, 10, 20, 40],
    )
    duration = plan.q(6.0, 2.0)
    with running(kind, tmp) as server:
        res = loadgen(
            server,
            {
                "mode": "fanout",
                "prefix": "sat",
                "rooms": 200,
                "clients": 10,
                "steps": [{"rate": r, "duration": duration, "drain": 3} for r in rates],
                "stop_on_fail": {"p99_ms": 100},
                "always_rates": [10],
            },
            timeout=plan.q(400, 120),
            verbose=verbose,
        )
        res["server_alive"] = server.alive()
    # highest step that passed (first try or second) before the ladder stopped
    steps = res["steps"]
    ladder = [s for s in steps if not s.get("extra")]
    best = max(
        (s for s in ladder if s.get("failed") is False),
        key=lambda s: s["deliveries_per_s"],
        default=None,
    )
    res["max_sustained"] = best
    res["max_sustained_gen_bound"] = bool(best and best["gen_cpu_pct"] > 85)
    res["at_18k"] = next((s for s in steps if s["rate_per_writer"] == 10), None)
    res["ceiling_reached"] = any(s.get("confirmed_fail") for s in steps)
    return res


def scenario_e(kind: str, tmp: Path, plan: Plan, verbose: bool) -> dict[str, Any]:
    with running(kind, tmp) as server:
        res = loadgen(
            server,
            {
                "mode": "idle",
                "prefix": "idle",
                "rooms": 50,
                "n": plan.q(1000, 200),
                "settle_ms": plan.q(2000, 1000),
            },
            timeout=120,
            verbose=verbose,
        )
        res["server_alive"] = server.alive()
    return res


def scenario_f(kind: str, tmp: Path, plan: Plan, verbose: bool) -> dict[str, Any]:
    args = ("--room-idle-seconds", "1") if kind == "crdt-sync" else ()
    with running(kind, tmp, *args) as server:
        res = loadgen(
            server,
            {
                "mode": "docs",
                "prefix": "doc",
                "docs": plan.q(500, 100),
                "kib": 20,
                "chunks": 20,
                "healthz": server.healthz,
                "unload_max_s": 60,
                "after_wait_s": plan.q(3, 2),
                "rounds": plan.q(2, 1),
                "settle_ms": plan.q(2000, 1000),
            },
            timeout=240,
            verbose=verbose,
        )
        res["server_alive"] = server.alive()
    return res


def settle(path: Path, quiet_s: float = 1.0, limit_s: float = 60.0) -> float:
    """Wait (bounded by ``limit_s``) until the files under ``path`` have not changed for
    ``quiet_s``; the seconds waited."""
    started = time.monotonic()

    def state() -> list[tuple[str, int, int]]:
        seen = []
        for f in path.rglob("*"):
            with contextlib.suppress(OSError):  # gone meanwhile (a compaction)
                st = f.stat()
                seen.append((str(f), st.st_size, st.st_mtime_ns))
        return sorted(seen)

    last, since = state(), time.monotonic()
    while time.monotonic() - started < limit_s:
        time.sleep(0.1)
        now = state()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return round(time.monotonic() - started, 2)


def scenario_g(kind: str, tmp: Path, plan: Plan, verbose: bool) -> dict[str, Any]:
    if kind == "pycrdt":
        return {"skipped": "stock pycrdt-websocket server has no persistence"}
    updates = plan.q(10_000, 2_000)
    # crdt-sync: keep the whole log uncompacted (compaction only at the threshold, on
    # unload and on SIGTERM; the server is killed with SIGKILL before the cold open)
    args = ("--compact-updates", "1000000") if kind == "crdt-sync" else ()
    room = "cold-doc"
    server = Server(kind, tmp, list(args), persist=True).start()
    try:
        fill = loadgen(server, {"mode": "fill", "room": room, "updates": updates}, 180, verbose)
        time.sleep(2)  # crdt-sync commits within 5 ms
        if kind != "crdt-sync":
            # y-leveldb writes asynchronously, one update after another: killed while
            # it still writes, the reopened doc lacks the last updates and its content
            # never arrives (seen: 10,000 updates were still being written after 2 s).
            fill["leveldb_settle_s"] = settle(server.workdir / "leveldb")
        server.stop(signal.SIGKILL)
        server.start()
        cold = loadgen(server, {"mode": "open", "room": room, "timeout_s": 60}, 90, verbose)
        time.sleep(1)
        # crdt-sync: SIGTERM compacts every open room; y-leveldb already merged the log
        # into one update while loading it (more than 500 updates)
        if kind == "crdt-sync":
            server.stop(signal.SIGTERM)
        else:
            time.sleep(1)
            server.stop(signal.SIGKILL)
        server.start()
        compacted = loadgen(server, {"mode": "open", "room": room, "timeout_s": 60}, 90, verbose)
        alive = server.alive()
    finally:
        server.stop()
    return {
        "updates": updates,
        "fill": fill,
        "cold": cold,
        "compacted": compacted,
        "server_alive": alive,
    }


RUNNERS: dict[str, Callable[[str, Path, Plan, bool], dict[str, Any]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "e": scenario_e,
    "f": scenario_f,
    "g": scenario_g,
}
TITLES = {
    "a": "fan-out 50 rooms x 10 clients @10/s",
    "b": "one room x 200 clients @20/s",
    "c": "saturation 200 rooms x 10 clients",
    "e": "RSS per idle connection",
    "f": "RSS per loaded 20 KB doc",
    "g": "cold open of a logged doc",
}


# -- table ----------------------------------------------------------------------------------


def dig(data: Any, *path: Any) -> Any:
    for key in path:
        if data is None:
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def step0(res: Any, key: str) -> Any:
    return dig(res, "steps", 0, key)


@dataclass
class Row:
    label: str
    unit: str
    better: str  # "lower", "higher", "" (information only)
    get: Callable[[dict[str, Any]], Any] | None  # per-server results -> value
    chart: bool = True
    note: str = ""


def kib_to_mib(v: Any) -> Any:
    return None if v is None else v / 1024


def c_max(r: dict[str, Any]) -> Any:
    if dig(r, "c", "steps") and dig(r, "c", "max_sustained") is None:
        return "< " + fmt(dig(r, "c", "steps", 0, "nominal_deliveries_per_s"))  # first step failed
    return dig(r, "c", "max_sustained", "deliveries_per_s")


ROWS = [
    Row("a. p50 relay latency", "ms", "lower", lambda r: step0(r.get("a"), "p50_ms")),
    Row("a. p99 relay latency", "ms", "lower", lambda r: step0(r.get("a"), "p99_ms")),
    Row("a. lost deliveries", "", "lower", lambda r: step0(r.get("a"), "lost"), chart=False),
    Row("a. deliveries/s", "/s", "higher", lambda r: step0(r.get("a"), "deliveries_per_s")),
    Row("a. server CPU", "%", "lower", lambda r: step0(r.get("a"), "server_cpu_pct")),
    Row("a. load generator CPU", "%", "", lambda r: step0(r.get("a"), "gen_cpu_pct"), False),
    Row("b. p50 relay latency", "ms", "lower", lambda r: step0(r.get("b"), "p50_ms")),
    Row("b. p99 relay latency", "ms", "lower", lambda r: step0(r.get("b"), "p99_ms")),
    Row("b. lost deliveries", "", "lower", lambda r: step0(r.get("b"), "lost"), chart=False),
    Row("c. max sustained deliveries/s", "/s", "higher", c_max),
    Row("c. p50 @18,000 deliveries/s", "ms", "lower", lambda r: dig(r, "c", "at_18k", "p50_ms")),
    Row("c. p99 @18,000 deliveries/s", "ms", "lower", lambda r: dig(r, "c", "at_18k", "p99_ms")),
    Row(
        "c. lost @18,000 deliveries/s",
        "",
        "lower",
        lambda r: dig(r, "c", "at_18k", "lost"),
        chart=False,
    ),
    Row(
        "c. load gen CPU @max step",
        "%",
        "",
        lambda r: dig(r, "c", "max_sustained", "gen_cpu_pct"),
        chart=False,
    ),
    Row(
        "d. CPU-s / 1k deliveries (a)",
        "s",
        "lower",
        lambda r: step0(r.get("a"), "server_cpu_s_per_1k_deliveries"),
    ),
    Row(
        "d. CPU-s / 1k deliveries (c@18k)",
        "s",
        "lower",
        lambda r: dig(r, "c", "at_18k", "server_cpu_s_per_1k_deliveries"),
    ),
    Row("e. RSS per idle connection", "KiB", "lower", lambda r: dig(r, "e", "kib_per_connection")),
    Row(
        "f. RSS per loaded 20 KB doc",
        "KiB",
        "lower",
        lambda r: dig(r, "f", "kib_per_loaded_doc"),
        note="room + doc + its one connection",
    ),
    Row(
        "f. RSS per doc, content only",
        "KiB",
        "lower",
        lambda r: dig(r, "f", "kib_per_doc_content"),
        chart=False,
    ),
    Row(
        "f. server RSS after clients left",
        "MiB",
        "lower",
        lambda r: kib_to_mib(dig(r, "f", "rss_after_leave_kib")),
        chart=False,
    ),
    Row(
        "f. RSS kept after left, per doc",
        "KiB",
        "lower",
        lambda r: dig(r, "f", "kib_per_doc_after_leave"),
    ),
    Row(
        "f. RSS kept after 2 rounds, per doc",
        "KiB",
        "lower",
        lambda r: (
            dig(r, "f", "kib_per_doc_after_last_round")
            if len(dig(r, "f", "rounds") or []) >= 2
            else None
        ),
        note="a 2nd set of docs loaded and left: growth = not reused",
    ),
    Row(
        "g. cold open, 10k logged updates",
        "ms",
        "lower",
        lambda r: dig(r, "g", "cold", "content_ms"),
        note="connect -> full content",
    ),
    Row(
        "g. cold open after compaction",
        "ms",
        "lower",
        lambda r: dig(r, "g", "compacted", "content_ms"),
    ),
    Row("persistence throughput", "", "", None),
    Row("frames end-to-end", "", "", None),
]


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(ours: Any, ref: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(ref, int | float):
        return "-"
    if ref == 0:
        return "=" if ours == 0 else "inf"
    r = ours / ref
    return f"{r:.3f}x" if abs(r) < 0.1 else f"{r:.2f}x"


def build_table(
    results: dict[str, dict[str, Any]], servers: list[str], scenarios: str, quick: bool = False
) -> list[dict[str, Any]]:
    table = []
    for row in ROWS:
        if quick and "10k logged" in row.label:
            row = replace(row, label=row.label.replace("10k", "2k"))
        key = row.label[0] if row.label[1] == "." else ""
        if key and key not in scenarios:
            continue
        values: dict[str, Any] = {}
        for kind in servers:
            res = results.get(kind, {})
            if row.get is None:
                values[kind] = "not measured by this runner"
                continue
            err = _scenario_error(res, row.label)
            values[kind] = err if err else row.get(res)
        if row.label.startswith("c. max"):
            for kind in servers:
                if dig(results, kind, "c", "max_sustained_gen_bound"):
                    values[kind + "_note"] = "load generator near 100% CPU: a lower bound"
        table.append(
            {
                "metric": row.label,
                "unit": row.unit,
                "better": row.better,
                "values": values,
                "chart": row.chart and row.get is not None,
                "note": row.note,
            }
        )
    return table


def _scenario_error(res: dict[str, Any], label: str) -> str | None:
    key = label[0]
    sources = {"d": "a"} if "(a)" in label else {"d": "c"}
    res_key = sources.get(key, key)
    sub = res.get(res_key)
    if isinstance(sub, dict):
        if "error" in sub:
            return "error"
        if "skipped" in sub:
            return "n/a"
    return None


def print_table(table: list[dict[str, Any]], servers: list[str]) -> str:
    refs = [s for s in servers if s != "crdt-sync"]
    ours = "crdt-sync" in servers
    head = ["metric", "unit", "better", *[SERVER_NAMES[s] for s in servers]]
    if ours:
        head += [f"crdt/{REF_LABELS[r]}" for r in refs]
    lines = []
    for row in table:
        vals = row["values"]
        if row["metric"] in ("persistence throughput", "frames end-to-end"):
            lines.append([row["metric"], "", "", "not measured by this runner"])
            continue
        cells = [row["metric"], row["unit"], row["better"]]
        cells += [fmt(vals.get(s)) + ("+" if vals.get(s + "_note") else "") for s in servers]
        if ours:
            cells += [ratio(vals.get("crdt-sync"), vals.get(r)) for r in refs]
        lines.append(cells)
    full = [c for c in [head, *lines] if len(c) == len(head)]
    widths = [max(len(str(c[i])) for c in full) for i in range(len(head))]
    out = []
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(widths[i]) if i < 3 else str(c).rjust(widths[i]) for i, c in enumerate(cells)
    )
    out.append(fmt_row(head))
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        if len(cells) == len(head):
            out.append(fmt_row(cells))
        else:
            out.append(cells[0].ljust(widths[0]) + "  " + cells[3])
    return "\n".join(out)


# -- chart ----------------------------------------------------------------------------------


def chart(table: list[dict[str, Any]], servers: list[str], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -r bench/requirements.txt): no chart")
        return False
    rows = [r for r in table if r["chart"]]
    if not rows:
        return False
    cols = 4
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    colors = {
        "crdt-sync": "#1f77b4",
        "pycrdt": "#ff7f0e",
        "node": "#2ca02c",
        "node-leveldb": "#98df8a",
    }
    for ax, row in zip(axes.flat, rows, strict=False):
        names, heights, cols_ = [], [], []
        for s in servers:
            v = row["values"].get(s)
            names.append(SERVER_NAMES[s].replace("-websocket", "-ws"))
            heights.append(v if isinstance(v, int | float) else 0)
            cols_.append(colors[s])
        bars = ax.bar(names, heights, color=cols_)
        for bar, s in zip(bars, servers, strict=True):
            v = row["values"].get(s)
            mark = "+" if row["values"].get(s + "_note") else ""
            ax.annotate(
                (fmt(v) + mark) if isinstance(v, int | float) else str(v or "-"),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ours = row["values"].get("crdt-sync")
        ratios = [
            f"/{REF_LABELS[s]} {ratio(ours, row['values'].get(s))}"
            for s in servers
            if s != "crdt-sync" and "crdt-sync" in servers
        ]
        if ratios:
            ax.text(
                0.02, 0.97, "crdt-sync" + ", ".join(ratios), transform=ax.transAxes,
                fontsize=7, va="top", color="#444444",
            )  # fmt: skip
        arrow = {"lower": " (lower is better)", "higher": " (higher is better)"}[row["better"]]
        unit = f" [{row['unit']}]" if row["unit"] else ""
        ax.set_title(f"{row['metric']}{unit}\n{arrow.strip()}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.25)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main -----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for pkg in ("pycrdt", "pycrdt-websocket", "hypercorn", "crdt-sync"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    for pkg in ("yjs", "ws", "@y/websocket-server", "y-leveldb"):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((BENCH / "node_modules" / pkg / "package.json").read_text())
            out[pkg] = meta["version"]
    return out


def ensure_node_modules() -> None:
    if shutil.which("node") is None:
        sys.exit("node is required (the load generator and the Node reference server)")
    if (BENCH / "node_modules" / "yjs").exists() and NODE_SERVER_BIN.exists():
        return
    print("bench/node_modules missing: npm ci (pinned by bench/package-lock.json)", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True, timeout=600)


def parse_list(value: str, allowed: dict[str, str] | str, what: str) -> list[str]:
    out: list[str] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if isinstance(allowed, dict):
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r}")
            item = allowed[item]
        elif item not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} {item!r}")
        if item not in out:
            out.append(item)
    return out


def report(path: Path) -> None:
    payload = json.loads(path.read_text())
    meta = payload["meta"]
    servers = meta["servers"]
    quick = meta["mode"].startswith("quick")
    shown = "".join(s for s in SCENARIOS if payload["results"][servers[0]].get(s) or s == "d")
    table = build_table(payload["results"], servers, shown, quick)
    print(print_table(table, servers))
    png = path.with_suffix(".png")
    title = (
        f"crdt-sync vs references ({meta['mode']} run {meta['when']}, {meta['cpus']} CPUs, "
        "loopback; ratios = crdt-sync / reference)"
    )
    if chart(table, servers, png, title):
        print(f"chart:   {png}")


def run_scenario(kind: str, key: str, plan: Plan, verbose: bool) -> dict[str, Any]:
    """One scenario on a fresh server process; an error becomes the result."""
    t0 = time.monotonic()
    print(f"  {SERVER_NAMES[kind]:<20} {key}. {TITLES[key]} ...", end="", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"compare-{kind}-{key}-") as tmp:
        try:
            res = RUNNERS[key](kind, Path(tmp), plan, verbose)
        except Exception as exc:
            log = ""
            with contextlib.suppress(OSError):
                logs = sorted(Path(tmp).glob("*.log"))
                log = "\n".join(p.read_text()[-1500:] for p in logs)
            print(f" ERROR: {str(exc)[:300]}", flush=True)
            return {"error": str(exc)[:2000], "server_log_tail": log}
    if res.get("server_alive") is False:
        res["error"] = "server process died during the scenario"
    print(f" {time.monotonic() - t0:.0f} s", flush=True)
    return res


def _numbers(tables: list[list[dict[str, Any]]], row: int, kind: str) -> list[float]:
    values = (t[row]["values"].get(kind) for t in tables)
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def median_table(tables: list[list[dict[str, Any]]], servers: list[str]) -> list[dict[str, Any]]:
    """Each figure's median over the rounds (one round: that round's table)."""
    if len(tables) == 1:
        return tables[0]
    merged = []
    for i, row in enumerate(tables[0]):
        values = dict(row["values"])
        for kind in servers:
            numbers = _numbers(tables, i, kind)
            if numbers:
                values[kind] = statistics.median(numbers)
                values[kind + "_spread"] = [min(numbers), max(numbers)]
            if any(t[i]["values"].get(kind + "_note") for t in tables):
                values[kind + "_note"] = "load generator near 100% CPU in a round: a lower bound"
        merged.append({**row, "values": values})
    return merged


def print_spread(tables: list[list[dict[str, Any]]], servers: list[str]) -> str:
    """Per figure: min-max of each server over the rounds, and the median and min-max of
    crdt-sync's ratio to each reference taken within each round (same minutes)."""
    refs = [s for s in servers if s != "crdt-sync"]
    lines = [f"spread over {len(tables)} rounds (min-max; ratios per round: median [min-max])"]
    for i, row in enumerate(tables[0]):
        parts = []
        for kind in servers:
            numbers = _numbers(tables, i, kind)
            if numbers:
                parts.append(f"{SERVER_NAMES[kind]} {fmt(min(numbers))}-{fmt(max(numbers))}")
        if "crdt-sync" in servers:
            for ref in refs:
                per_round = []
                for t in tables:
                    ours, theirs = t[i]["values"].get("crdt-sync"), t[i]["values"].get(ref)
                    if isinstance(ours, int | float) and isinstance(theirs, int | float) and theirs:
                        per_round.append(ours / theirs)
                if per_round:
                    parts.append(
                        f"crdt/{REF_LABELS[ref]} "
                        f"{statistics.median(per_round):.2f}x "
                        f"[{min(per_round):.2f}-{max(per_round):.2f}]"
                    )
        if parts:
            lines.append(f"  {row['metric']}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (~1-2 minutes)")
    parser.add_argument(
        "--servers",
        default="crdt-sync,pycrdt,node",
        type=lambda v: parse_list(v, ALIASES, "server"),
        help="comma list of crdt-sync, pycrdt, node, node-leveldb (default: the first three)",
    )
    parser.add_argument(
        "--scenarios",
        default=SCENARIOS,
        type=lambda v: parse_list(",".join(v.replace(",", "")), SCENARIOS, "scenario"),
        help="scenario letters, e.g. 'a,c,e' or 'ace' (default: abcdefg)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    parser.add_argument("--verbose", "-v", action="store_true", help="print load generator logs")
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="clients offer permessage-deflate as browsers do (default: off)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="crdt-sync runs with --workers N (1-16; more than 1 implies --shared-store)",
    )
    parser.add_argument(
        "--shared-store",
        action="store_true",
        help="crdt-sync runs on a throwaway PostgreSQL database of this machine and its "
        "Redis (CRDT_SYNC_TEST_POSTGRES, CRDT_SYNC_TEST_REDIS) instead of SQLite",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run everything N times (1-9); the table shows medians, then each figure's "
        "spread and the median of the per-round ratios",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="print the table and redraw the chart of a saved results file; run nothing",
    )
    args = parser.parse_args()
    if not 1 <= args.repeat <= 9:
        parser.error("--repeat must be 1-9")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be 1-16")
    global WORKERS, SHARED_STORE
    WORKERS = args.workers
    SHARED_STORE = args.shared_store or args.workers > 1
    if args.report is not None:
        report(args.report)
        return
    global DEFLATE
    DEFLATE = args.deflate
    scenarios = "".join(s for s in SCENARIOS if s in args.scenarios)
    # d is computed from a and c
    to_run = [s for s in RUNNERS if s in scenarios or (s in "ac" and "d" in scenarios)]
    servers = [s for s in SERVER_NAMES if s in args.servers]

    # SIGTERM unwinds like Ctrl-C, so that the servers and load generators are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_node_modules()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = Plan(args.quick)
    started = time.monotonic()
    print(
        f"servers: {', '.join(SERVER_NAMES[s] for s in servers)}; scenarios: {scenarios}; "
        f"mode: {'quick' if args.quick else 'full'}",
        flush=True,
    )
    rounds: list[dict[str, dict[str, Any]]] = []
    for round_no in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"round {round_no} of {args.repeat}", flush=True)
        # Servers alternate within a round, so a noisy minute hits each of them.
        results = {s: {} for s in servers}
        for kind in servers:
            for key in to_run:
                results[kind][key] = run_scenario(kind, key, plan, args.verbose)
        rounds.append(results)

    shown = "".join(sorted(set(scenarios) | set(to_run)))
    tables = [build_table(r, servers, shown, args.quick) for r in rounds]
    table = median_table(tables, servers)
    text = print_table(table, servers)
    if len(rounds) > 1:
        text += "\n\n" + print_spread(tables, servers)
    elapsed = time.monotonic() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mode = ("quick" if args.quick else "full") + ("-deflate" if args.deflate else "")
    mode += f"-x{args.repeat}" if args.repeat > 1 else ""
    mode += f"-w{WORKERS}" if WORKERS > 1 else ("-pg" if SHARED_STORE else "")
    json_path = args.out / f"compare-{stamp}-{mode}.json"
    png_path = args.out / f"compare-{stamp}-{mode}.png"
    title = (
        f"crdt-sync vs references ({mode} run {stamp}, {os.cpu_count()} CPUs, "
        "loopback; ratios = crdt-sync / reference)"
    )
    meta = {
        "when": stamp,
        "mode": mode,
        "seconds": elapsed,
        "cpus": os.cpu_count(),
        "servers": servers,
        "scenarios": scenarios,
        "deflate_offered": args.deflate,
        "repeat": args.repeat,
        "crdt_sync_workers": WORKERS,
        "crdt_sync_store": "postgresql+redis" if SHARED_STORE else "sqlite",
        "versions": versions(),
        "not_measured": ["persistence throughput", "frames end-to-end"],
    }
    payload = {
        "meta": meta,
        "table": table,
        "results": results,
        "rounds": rounds if len(rounds) > 1 else None,
        "round_tables": tables if len(rounds) > 1 else None,
        "printed": text,
    }
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    made_chart = chart(table, servers, png_path, title)
    print()
    print(text)
    print()
    for kind in servers:
        if dig(results, kind, "c", "max_sustained_gen_bound"):
            print(
                f"+ {SERVER_NAMES[kind]}: load generator near 100% CPU at its highest passing "
                "step: the figure is a lower bound"
            )
        if dig(results, kind, "c") and not dig(results, kind, "c", "ceiling_reached"):
            print(
                f"  {SERVER_NAMES[kind]}: no failing step within the ladder (ceiling not reached)"
            )
    print(f"results: {json_path}" + (f"\nchart:   {png_path}" if made_chart else ""))
    print(f"total {elapsed:.0f} s")


if __name__ == "__main__":
    main()
