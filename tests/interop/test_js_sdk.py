"""The JavaScript SDK (``web/sdk``, ``@crdt-sync/sdk``) against real server processes.

The scenarios are ``tests/interop/js/sdk_*.mjs``: the real SDK module under Node 20,
with the ``ws`` package as its WebSocket. The servers are real ``crdt-sync serve``
processes, stopped, restarted on the same port, or frozen with SIGSTOP. The SDK's own
unit tests (``web/sdk/test/*.test.mjs``, node's test runner) run from here too.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import free_port
from tests.integration.auth_support import SECRET, token

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent.parent
SDK_DIR = ROOT / "web" / "sdk"
FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "20")


def delta(server: Any, since: int = 0, **headers: str) -> list[dict]:
    frames: list[dict] = []
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as http:
        for _ in range(1000):
            response = http.get("/sync/v1/delta", params={"since": since, "limit": 1000})
            assert response.status_code == 200, response.text
            body = response.json()
            frames += body["frames"]
            since = body["next"]
            if not body["more"]:
                return frames
    raise AssertionError("the delta did not end")


def records(server: Any, t: str, **headers: str) -> dict[str, dict]:
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as http:
        response = http.get("/sync/v1/records", params={"t": t, "limit": 1000})
    assert response.status_code == 200, response.text
    return {r["id"]: r["fields"] for r in response.json()["records"]}


# -- unit tests (no server) ------------------------------------------------------------


def test_sdk_unit_tests_pass_under_nodes_test_runner(node_bin: str) -> None:
    tests = sorted(str(p) for p in (SDK_DIR / "test").glob("*.test.mjs"))
    assert tests, "web/sdk/test has no *.test.mjs"
    done = subprocess.run(
        [node_bin, "--test", *tests], cwd=SDK_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout, done.stdout


# -- the server stopped for 5 s with saves queued ------------------------------------------


def test_queued_saves_survive_a_server_restart_and_apply_once(
    server_factory: Any, node: Any, tmp_path: Path
) -> None:
    port = free_port()
    db = tmp_path / "restart.db"
    server = server_factory(*FAST, "--port", str(port), db=db)
    scenario = node.start("sdk_restart.mjs", server.url, "task")
    ready = scenario.expect("ready", timeout=20)
    assert set(ready["pool"]) == {"a", "b"}
    server.stop()
    queued = scenario.expect("queued", timeout=20)
    assert queued["pending"] == 4 and queued["state"] != "online", queued
    # Applied to the pool at once, optimistically.
    assert queued["pool"] == {
        "a": {"title": "A", "status": "doing", "owner": "ann"},
        "c": {"title": "Made offline", "status": "done"},
    }, queued
    time.sleep(5)  # the outage the issue asks for (not an assertion)
    restarted = server_factory(*FAST, "--port", str(port), db=db)
    assert restarted.url == server.url
    result = scenario.expect("result", timeout=40)
    scenario.finish()
    assert result["state"] == "online" and result["pending"] == 0, result
    assert [r["status"] for r in result["results"]] == [200, 201, 200, 200], result
    assert result["equal"], result
    assert result["pool"] == records(restarted, "task") == {
        "a": {"title": "A", "status": "doing", "owner": "ann"},
        "c": {"title": "Made offline", "status": "done"},
    }
    assert "offline" in result["states"] and result["states"][-1] == "online", result
    # Exactly once: each queued client_tx_id is in the frame log once, in queue order.
    frames = [f for f in delta(restarted) if f["ctx"].get("client_tx_id") in queued["tx_ids"]]
    assert [f["ctx"]["client_tx_id"] for f in frames] == queued["tx_ids"], frames
    assert [(f["id"], f["op"]) for f in frames] == [("a", "u"), ("c", "i"), ("c", "u"), ("b", "d")]


# -- 100 clients reconnecting: spread, not lock-step --------------------------------------


def test_hundred_clients_spread_their_reconnects(
    server_factory: Any, node: Any, tmp_path: Path
) -> None:
    base_ms, cap_ms, count = 1000, 8000, 100
    port = free_port()
    db = tmp_path / "spread.db"
    flags = (*FAST, "--port", str(port), "--max-connections-per-actor", "1000")
    server = server_factory(*flags, db=db)
    scenario = node.start(
        "sdk_spread.mjs", server.url, "task", {"clients": count, "base": base_ms, "cap": cap_ms}
    )
    scenario.expect("ready", timeout=40)
    server.stop()
    scenario.expect("all_offline", timeout=30)
    time.sleep(3)  # the outage: long enough for several attempts each (not an assertion)
    restarting_at = int(time.time() * 1000)  # the old process has exited
    server_factory(*flags, db=db)
    scenario.send(f"restarted {restarting_at}")
    result = scenario.expect("result", timeout=80)
    scenario.finish(timeout=30)

    clients = result["clients"]
    assert len(clients) == count and result["pools_equal"], result["answer"]
    assert all(c["online_again_at"] for c in clients)
    first = [c["attempts"][0] - c["dropped_at"] for c in clients]
    every = sorted(a - c["dropped_at"] for c in clients for a in c["attempts"])
    back = [c["online_again_at"] - result["restarted_at"] for c in clients]
    buckets: dict[int, int] = {}
    for delay in first:
        buckets[delay // 50] = buckets.get(delay // 50, 0) + 1
    figures = {
        "clients": count,
        "base_ms": base_ms,
        "first_attempt_ms": {
            "min": min(first),
            "median": statistics.median(first),
            "max": max(first),
            "stdev": round(statistics.pstdev(first), 1),
            "distinct": len(set(first)),
            "largest_50ms_bucket": max(buckets.values()),
        },
        "attempts_per_client": statistics.mean(len(c["attempts"]) for c in clients),
        "all_attempts_ms": {"first": every[0], "last": every[-1], "count": len(every)},
        "back_online_after_restart_ms": {
            "min": min(back),
            "median": statistics.median(back),
            "max": max(back),
        },
    }
    print("reconnect spread:", json.dumps(figures))
    # Not lock-step: full jitter spreads the first attempts over [0, base].
    assert len(set(first)) >= count * 0.8, figures
    assert max(first) - min(first) >= base_ms / 4, figures
    assert statistics.pstdev(first) >= base_ms / 10, figures
    assert max(buckets.values()) <= count / 4, figures
    assert min(first) >= 0, figures
