"""The JavaScript SDK (``web/sdk``, ``@crdt-sync/sdk``) against real server processes.

The scenarios are ``tests/interop/js/sdk_*.mjs``: the real SDK module under Node 20,
with the ``ws`` package as its WebSocket. The servers are real ``crdt-sync serve``
processes, stopped, restarted on the same port, or frozen with SIGSTOP. The SDK's own
unit tests (``web/sdk/test/*.test.mjs``, node's test runner) run from here too.
"""

from __future__ import annotations

import json
import re
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
    expected = {
        "a": {"title": "A", "status": "doing", "owner": "ann"},
        "c": {"title": "Made offline", "status": "done"},
    }
    assert result["pool"] == records(restarted, "task") == expected
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


# -- the heartbeat: a frozen server ----------------------------------------------------------


def test_heartbeat_gives_up_a_frozen_server_within_its_timeout(
    server_factory: Any, node: Any
) -> None:
    ping_interval, ping_timeout = 300, 1500
    server = server_factory(*FAST)
    scenario = node.start(
        "sdk_heartbeat.mjs",
        server.url,
        "task",
        {"ping_interval": ping_interval, "ping_timeout": ping_timeout},
    )
    scenario.expect("ready", timeout=20)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        scenario.send(f"stopped {int(time.time() * 1000)}")
        dead = scenario.expect("dead", timeout=30)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    scenario.send("resumed")
    result = scenario.expect("result", timeout=30)
    scenario.finish()
    noticed_after = dead["at"] - dead["stopped_at"]
    print("heartbeat noticed the frozen server after", noticed_after, "ms")
    # The TCP connection stayed open: only the heartbeat (4408, its own timeout) knew.
    assert [e["code"] for e in dead["errors"]][:1] == [4408], dead
    assert dead["errors"][0]["error"] == "timeout", dead
    # Within its timeout: at most pingTimeout after the last message, which was at most
    # one ping interval before the freeze (+ generous slack for a loaded machine).
    assert 0 <= noticed_after <= ping_timeout + 5000, dead
    assert result["state"] == "online" and result["equal"], result
    assert result["result"]["status"] == 200 and result["pool"] == {"hb": {"status": "done"}}


# -- conflicts ----------------------------------------------------------------------------


def test_conflict_fires_on_conflict_with_the_overwritten_fields(
    server_factory: Any, node: Any
) -> None:
    server = server_factory(*FAST)
    result = node.run("sdk_conflict.mjs", server.url, "task", timeout=40)["result"]
    [conflict] = result["conflicts"]["a"]
    assert result["conflicts"]["b"] == [], result
    assert (conflict["t"], conflict["id"]) == ("task", "k")
    # Only `status`: B wrote it since A's base_sid and A overwrote it; B's `owner` and
    # A's `title` did not collide.
    assert list(conflict["fields"]) == ["status"], conflict
    assert conflict["fields"]["status"]["value"] == "done"
    assert conflict["fields"]["status"]["sid"] == result["b_result"]["sid"]
    assert conflict["result"]["conflicts"] == ["status"]
    # While A's change waited, B's frame was applied underneath it: A still showed its own.
    assert result["a_while_down"] == {"title": "A title", "status": "doing", "owner": "bob"}
    expected = {"k": {"title": "A title", "status": "doing", "owner": "bob"}}
    assert result["a_pool"] == result["b_pool"] == result["records"] == expected


# -- SSE fallback -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no_websocket", "blocked_upgrade"])
def test_sse_when_the_websocket_is_unavailable(server_factory: Any, node: Any, mode: str) -> None:
    server = server_factory(*FAST)
    result = node.run("sdk_sse.mjs", server.url, "task", {"mode": mode}, timeout=40)["result"]
    assert result["transport"] == "sse" and result["state"] == "online", result
    if mode == "blocked_upgrade":
        # It tried the WebSocket first, the proxy refused each upgrade, then SSE.
        assert result["ws_attempts"] == result["refused_upgrades"] >= 2, result
    assert result["other"]["status"] == 201 and result["own"]["status"] == 201
    assert result["equal"] and set(result["pool"]) == {"other", "mine"}, result
    sids = [sid for batch in result["batches"] for sid in batch]
    assert sids == sorted(set(sids)), "each frame once, in sid order"


# -- one mutation request, one batch ------------------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "sse", "longpoll"])
def test_a_request_of_three_mutations_is_one_batch_on_every_transport(
    server_factory: Any, node: Any, transport: str
) -> None:
    server = server_factory(*FAST)
    result = node.run("sdk_tx.mjs", server.url, "task", {"transport": transport}, timeout=40)
    result = result["result"]
    assert result["transport"] == transport, result
    sids = [r["sid"] for r in result["results"]]
    tx = result["tx"]
    # The subscriber got the three frames of the request together, with their tx.
    [batch] = [b for b in result["batches"] if any(f["sid"] in sids for f in b)]
    assert [f["sid"] for f in batch] == sids and {f["tx"] for f in batch} == {tx}, result
    # The writer's three saves went in one request: one tx, one batch at the reader.
    saved = [s["sid"] for s in result["saved"]]
    assert len({s["tx"] for s in result["saved"]}) == 1, result
    [theirs] = [b for b in result["batches"] if any(f["sid"] in saved for f in b)]
    assert [f["sid"] for f in theirs] == saved, result
    assert result["equal"], result


# -- auth close codes ---------------------------------------------------------------------


def test_4401_asks_for_a_token_and_comes_back(server_factory: Any, node: Any) -> None:
    server = server_factory(*FAST, "--auth-secret", SECRET)
    short = token(sub="alice", ttl=6)
    fresh = token(sub="alice", ttl=600)
    scenario = node.start(
        "sdk_auth.mjs",
        server.url,
        "task",
        {"case": "expiry", "token": short, "fresh": [fresh], "read_token": fresh},
    )
    online = scenario.expect("online", timeout=20)
    assert online["asked"] == 0
    result = scenario.expect("result", timeout=30)
    scenario.finish()
    [asked] = result["asked"]
    assert asked["code"] == 4401 and asked["reason"] == "token_expired", result
    assert result["state"] == "online" and result["equal"], result
    assert result["pool"] == {"x": {"n": 2}}


def test_a_refused_first_token_asks_for_another(server_factory: Any, node: Any) -> None:
    server = server_factory(*FAST, "--auth-secret", SECRET)
    good = token(sub="alice", ttl=600)
    params = {"case": "bad_token", "token": "garbage", "fresh": [good], "read_token": good}
    result = node.run("sdk_auth.mjs", server.url, "task", params, timeout=30)["result"]
    [asked] = result["asked"]
    assert asked["code"] == 4401, result
    assert result["state"] == "online" and result["equal"], result


def test_4403_stops_the_client(server_factory: Any, node: Any) -> None:
    server = server_factory(*FAST, "--auth-secret", SECRET)
    params = {
        "case": "forbidden",
        "token": token(sub="alice", ttl=600),
        # A renewal must be of the same actor: bob's token is refused with 4403.
        "fresh": [token(sub="bob", ttl=600)],
    }
    result = node.run("sdk_auth.mjs", server.url, "task", params, timeout=30)["result"]
    assert result["error"]["code"] == 4403 and result["error"]["fatal"], result
    assert result["state"] == "offline", result
    assert result["attempts_later"] == result["attempts"] == 1, result


# -- served by the app ----------------------------------------------------------------------


def test_the_app_serves_the_sdk_as_javascript_modules(server: Any) -> None:
    """What a browser loads from ``/web/sdk/index.js``: every module it imports, as
    JavaScript (a module script with another content type is refused)."""

    modules = [p.name for p in SDK_DIR.glob("*.js")]
    assert "index.js" in modules
    imported = set(re.findall(r"from '\./([\w-]+\.js)'", (SDK_DIR / "index.js").read_text()))
    assert imported and imported <= set(modules)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name in modules:
            response = http.get(f"/web/sdk/{name}")
            assert response.status_code == 200, name
            kind = response.headers["content-type"].split(";")[0]
            assert kind in ("text/javascript", "application/javascript"), (name, kind)
            assert response.text == (SDK_DIR / name).read_text()
        manifest = http.get("/web/sdk/package.json")
        assert manifest.status_code == 200
        assert manifest.json()["name"] == "@crdt-sync/sdk"


# -- 4429: rate limited -------------------------------------------------------------------


def test_4429_waits_at_least_retry_after(server_factory: Any, node: Any) -> None:
    server = server_factory(*FAST, "--rate-limit-ws-messages", "5", "--rate-limit-window", "3")
    result = node.run("sdk_rate_limit.mjs", server.url, "task", timeout=40)["result"]
    limited = result["limited"]
    assert limited["error"] == "rate_limited" and not limited["fatal"], result
    # The server's retry_after (whole seconds, >= 1) is the floor of the next delay,
    # far above the client's own backoff ceiling (100 ms).
    print("rate limited: waited", result["waited_ms"], "ms before the next attempt")
    assert limited["retryAfter"] >= 1000, result
    assert result["waited_ms"] >= limited["retryAfter"] - 5, result  # 5 ms: clock rounding


def test_a_read_only_token_blocks_the_queue_but_not_the_feed(
    server_factory: Any, node: Any
) -> None:
    server = server_factory(*FAST, "--auth-secret", SECRET)
    params = {"case": "read_only", "token": token(sub="viewer", mode="read", ttl=600)}
    result = node.run("sdk_auth.mjs", server.url, "task", params, timeout=30)["result"]
    assert result["state"] == "online" and result["error"] is None, result
    queue = result["queue"]
    assert queue["state"] == "blocked" and queue["pending"] == 1, result
    assert queue["error"]["code"] == 4403, result
    assert result["pool"] == {"x": {"n": 1}}, "still shown, still queued"
    assert result["asked"] == [], "a 403 is not a token to refresh"
    assert records(server, "task", Authorization=f"Bearer {params['token']}") == {}
