"""Benchmark of the sidecar feed: long-poll wake-up, webhook delivery, version restore.

Run on demand from the repository root (prints figures, asserts nothing; loopback only;
every phase bounded in count and time)::

    python bench/bench_sidecar.py [--rounds N] [--json PATH]

One ``crdt-sync serve`` child process (``tests/server_process.py``) on a fresh SQLite
database, with a webhook pointing at a receiver in this process (the default throttle,
``--webhook-throttle-ms 1000``, which is per record).

(a) Long-poll wake-up: a ``GET /sync/v1/delta?live=1&timeout_ms=10000`` is held, then
    one mutation is POSTed; measured from just before the POST to the poll's answer
    (which carries the frame). Also: the answer of a poll with nothing to wait for.
(b) Webhook delivery: from just before the POST of a mutation to the receiver's having
    the signed batch carrying its frame (the outbox row is written in the frame's
    transaction; the sender polls every 250 ms and is woken by the frame bus). Each
    round changes a record for the first time, so the throttle does not hold it. Also:
    a record changed twice in a row, the second change timed (it waits for the
    record's window, about a second after the first change's POST).
(c) Version restore: a doc of about 20 KB of text edited in N steps; POST a version,
    edit on, then POST .../restore; the restore's latency (it takes a before-version,
    computes the forward change, applies it durably, takes an after-version).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from pycrdt import Doc, Text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.server_process import ServerProcess

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def figures(name: str, ms: list[float]) -> dict[str, Any]:
    row = {
        "name": name,
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": round(pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
    }
    print(
        f"{name:<44} n={row['n']:<4} p50 {row['p50_ms']} ms  "
        f"p99 {row['p99_ms']} ms  max {row['max_ms']} ms"
    )
    return row


class Receiver:
    """A webhook receiver: notes when each frame's sid arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.perf_counter()
                with receiver.cond:
                    for frame in json.loads(body)["frames"]:
                        receiver.arrived.setdefault(frame["sid"], now)
                    receiver.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, sid: int, timeout: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while sid not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrived[sid]


def mutate(http: httpx.Client, n: int, op: str = "u", id: str = "bench") -> int:
    answer = http.post(
        "/sync/v1/mutations",
        json={"mutations": [{"t": "card", "id": id, "op": op, "p": {"n": n}}]},
    )
    answer.raise_for_status()
    result = answer.json()["results"][0]
    if "sid" not in result:
        raise SystemExit(f"mutation refused: {result}")
    return result["sid"]


def long_polls(http: httpx.Client, rounds: int) -> tuple[list[float], list[float]]:
    woken: list[float] = []
    immediate: list[float] = []
    for n in range(rounds):
        since = http.get("/sync/v1/delta", params={"since": 0, "limit": 1}).json()
        cursor = since.get("next") or 0
        tail = http.get("/sync/v1/delta", params={"since": cursor, "limit": 1000}).json()
        cursor = tail["next"]
        result: dict[str, Any] = {}

        def poll(at: int = cursor, result: dict[str, Any] = result) -> None:
            with httpx.Client(base_url=str(http.base_url), timeout=20) as own:
                page = own.get(
                    "/sync/v1/delta", params={"since": at, "live": 1, "timeout_ms": 10000}
                ).json()
            result["at"] = time.perf_counter()
            result["page"] = page

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.05)  # the poll is held by now (one loopback round trip)
        started = time.perf_counter()
        mutate(http, n)
        poller.join(15)
        if "at" in result and result["page"].get("frames"):
            woken.append((result["at"] - started) * 1000)
        started = time.perf_counter()
        http.get("/sync/v1/delta", params={"since": 0, "live": 1, "timeout_ms": 10000})
        immediate.append((time.perf_counter() - started) * 1000)
    return woken, immediate


def webhook_latency(http: httpx.Client, receiver: Receiver, rounds: int) -> list[float]:
    out: list[float] = []
    for n in range(rounds):
        started = time.perf_counter()
        sid = mutate(http, n, op="i", id=f"hook-{n}")
        arrived = receiver.wait_for(sid)
        if arrived is not None:
            out.append((arrived - started) * 1000)
    return out


def throttled_latency(http: httpx.Client, receiver: Receiver, rounds: int) -> list[float]:
    out: list[float] = []
    for n in range(rounds):
        first = mutate(http, 0, op="i", id=f"typed-{n}")
        receiver.wait_for(first)
        started = time.perf_counter()
        sid = mutate(http, 1, id=f"typed-{n}")
        arrived = receiver.wait_for(sid)
        if arrived is not None:
            out.append((arrived - started) * 1000)
    return out


def restores(http: httpx.Client, rounds: int) -> tuple[list[float], int]:
    doc = Doc()
    text = doc.get("body", type=Text)
    for i in range(200):
        with doc.transaction():
            text.insert(len(text), f"line {i} " + "x" * 90 + "\n")
    http.post("/docs/bench-doc/update", content=doc.get_update()).raise_for_status()
    size = len(doc.get_update())
    out: list[float] = []
    for n in range(rounds):
        version = http.post("/docs/bench-doc/versions", json={"label": f"r{n}"})
        version.raise_for_status()
        before = doc.get_state()
        with doc.transaction():
            text.insert(0, f"edit {n}\n")
        http.post("/docs/bench-doc/update", content=doc.get_update(before)).raise_for_status()
        started = time.perf_counter()
        answer = http.post(f"/docs/bench-doc/versions/{version.json()['version']}/restore")
        out.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        state = http.get("/docs/bench-doc/update").content
        doc = Doc()
        doc.apply_update(state)
        text = doc.get("body", type=Text)
    return out, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="samples per figure (max 1000)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 1000))
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as tmp:
        server_args = (
            "--delta-min-interval-ms", "0",
            "--webhook", receiver.url,
            "--webhook-secret", SECRET,
            "--webhook-throttle-ms", "1000",
            "--frame-coalesce-ms", "20",
        )  # fmt: skip
        with ServerProcess(Path(tmp), *server_args) as server:
            with httpx.Client(base_url=server.url, timeout=20) as http:
                mutate(http, -1, op="i")
                rows = []
                woken, immediate = long_polls(http, rounds)
                rows.append(figures("(a) long-poll: POST -> held poll answers", woken))
                rows.append(figures("(a) long-poll with frames waiting", immediate))
                hooked = webhook_latency(http, receiver, rounds)
                rows.append(figures("(b) webhook: POST -> receiver has frame", hooked))
                held = throttled_latency(http, receiver, min(rounds, 5))
                rows.append(figures("(b) webhook: same record again (throttled)", held))
                restored, size = restores(http, min(rounds, 30))
                rows.append(figures(f"(c) restore of a {size // 1024} KB doc", restored))
            log = server.log()
    problems = [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]
    print(f"server log: {len(problems)} error lines")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "log_errors": len(problems)}, indent=2))


if __name__ == "__main__":
    main()
