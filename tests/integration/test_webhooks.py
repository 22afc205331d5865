"""Outgoing webhooks against real servers and a real receiver (an HTTP server in a
thread of the test): signatures verified with the ``standardwebhooks`` library (also
across a secret rotation), retries under one ``webhook-id``, redelivery after the
sender is killed mid-request, exactly one delivery per event with two nodes on one
PostgreSQL store, the type filter, parking and replay, the throttle, bad flags."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.cluster import Cluster
from tests.server_process import ServerProcess
from tests.store_backends import throwaway_database

OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 24).decode()
NEW_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
#: Fast retries, no batching window unless a test sets one.
FAST = (
    "--webhook-secret",
    NEW_SECRET,
    "--webhook-backoff-seconds",
    "0.05",
    "--webhook-backoff-max-seconds",
    "0.2",
    "--webhook-throttle-ms",
    "0",
    "--webhook-timeout",
    "1",
)
WAIT = 30.0  # seconds: the bound of every wait below


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A webhook receiver on a free 127.0.0.1 port. ``answer(n)`` gives the status of
    the n-th request (0-based); ``hold`` (set by a test) keeps the first request
    unanswered until it is set."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answer: Callable[[int], int] = lambda n: 200
        self.hold: threading.Event | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    n = len(receiver.requests)
                    status = receiver.answer(n)
                    hold = receiver.hold if n == 0 else None
                    receiver.requests.append(Received(headers, body, status if hold is None else 0))
                if hold is not None:
                    hold.wait(WAIT)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed mid-request)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def frames(self) -> list[dict[str, Any]]:
        return [f for r in self.accepted() for f in r.json["frames"]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    if r.hold is not None:
        r.hold.set()
    r.server.shutdown()
    r.server.server_close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def mutate(
    server: ServerProcess, *items: tuple[str, str], op: str = "i", n: Any = None
) -> list[int]:
    """Insert (or update) one record per ``(t, id)`` in one request; the sids of its frames."""
    body = {
        "mutations": [
            {"t": t, "id": id, "op": op, "p": {"n": id if n is None else n}} for t, id in items
        ]
    }
    response = httpx.post(server.url + "/sync/v1/mutations", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return [r["sid"] for r in response.json()["results"]]


def admin(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.url + "/admin/webhooks", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def settled(server: ServerProcess) -> bool:
    """Nothing pending and no backlog on any endpoint."""
    state = admin(server)
    return not state["pending"] and all(
        o["backlog"] == 0 for e in state["endpoints"] for o in e["orgs"]
    )


def test_every_request_is_signed_and_verifies_across_a_rotation(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Signed with both secrets: the receiver that knows only the new one accepts.
    args = ("--webhook", receiver.url, *FAST, "--webhook-secret", OLD_SECRET)
    with ServerProcess(tmp_path, *args) as server:
        sids = mutate(server, ("card", "a"), ("column", "b"))
        sids += mutate(server, ("card", "c"))
        wait_for("every frame", lambda: len(receiver.frames()) >= 3)
        for request in receiver.all():
            Webhook(NEW_SECRET).verify(request.body, request.headers)
            Webhook(OLD_SECRET).verify(request.body, request.headers)
            assert request.headers["content-type"] == "application/json"
            assert request.headers["user-agent"].startswith("crdt-sync/")
            body = request.json
            assert body["type"] == "frames" and body["org"] == "default"
            endpoint, org, span = request.id.split(":")
            assert org == "default" and span == f"{body['first_sid']}-{body['last_sid']}"
            assert endpoint.startswith("wh_")
        assert [f["sid"] for f in receiver.frames()] == sids
        first = receiver.frames()[0]
        assert {"sid", "t", "id", "op", "p", "who", "at", "ctx"} <= set(first)
        assert (first["t"], first["id"], first["op"], first["p"]) == ("card", "a", "i", {"n": "a"})
        wait_for("a settled outbox", lambda: settled(server))
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'crdt_sync_webhook_attempts_total{outcome="ok"}' in metrics
        assert "crdt_sync_webhook_in_flight" in metrics
        assert OLD_SECRET not in server.log() and NEW_SECRET not in server.log()


def test_a_receiver_failing_five_times_then_accepting_sees_one_webhook_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda n: 500 if n < 5 else 204
    with ServerProcess(tmp_path, "--webhook", receiver.url, *FAST) as server:
        sids = mutate(server, ("card", "a"), ("card", "b"))
        wait_for("the sixth attempt accepted", receiver.accepted)
        wait_for("a settled outbox", lambda: settled(server))
        requests = receiver.all()
        assert len(requests) == 6
        assert len({r.id for r in requests}) == 1
        assert len({r.body for r in requests}) == 1  # the same batch each time
        assert [f["sid"] for f in receiver.frames()] == sids
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'crdt_sync_webhook_attempts_total{outcome="error"} 5.0' in metrics
        assert 'crdt_sync_webhook_attempts_total{outcome="ok"} 1.0' in metrics
        assert server.log().count("failed (HTTP 500)") == 5


def test_the_sender_killed_mid_delivery_delivers_once_more_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.hold = threading.Event()
    args = ("--webhook", receiver.url, *FAST)
    db = tmp_path / "kill.db"
    server = ServerProcess(tmp_path, *args, db=db).start()
    try:
        sids = mutate(server, ("card", "a"))
        wait_for("the held request", receiver.all)
        server.kill()
    finally:
        server.__exit__(None, None, None)
    receiver.hold.set()
    with ServerProcess(tmp_path, *args, db=db) as again:
        wait_for("the redelivery", receiver.accepted)
        wait_for("a settled outbox", lambda: settled(again))
        requests = receiver.all()
        assert len(requests) == 2, [r.id for r in requests]
        assert requests[0].id == requests[1].id
        assert [f["sid"] for f in receiver.frames()] == sids


def test_two_nodes_on_one_postgres_store_deliver_each_event_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    # A real cluster (PostgreSQL and Redis): every node runs a sender and hears every
    # node's frames, so both race for every batch.
    with (
        throwaway_database() as url,
        Cluster(tmp_path, url, size=2, args=("--webhook", receiver.url, *FAST)) as cluster,
    ):
        n1, n2 = cluster.nodes
        sids = []
        for i in range(40):
            sids += mutate((n1, n2)[i % 2], ("card", f"c{i}"))
        wait_for("every frame", lambda: len(receiver.frames()) >= len(sids))
        wait_for("both settled", lambda: settled(n1) and settled(n2))
        delivered = [f["sid"] for f in receiver.frames()]
        assert sorted(delivered) == sorted(sids)  # each once
        ids = [r.id for r in receiver.all()]
        assert len(ids) == len(set(ids))


def test_type_filter_parking_and_replay(tmp_path: Path, receiver: Receiver) -> None:
    down = True
    receiver.answer = lambda n: 503 if down else 200
    args = ("--webhook", f"card+tag={receiver.url}", *FAST, "--webhook-retry-hours", "0.0003")
    with ServerProcess(tmp_path, *args) as server:
        [card] = mutate(server, ("card", "a"))
        mutate(server, ("column", "b"))
        parked = wait_for("a parked batch", lambda: admin(server)["parked"])
        assert parked[0]["attempts"] >= 1 and parked[0]["last_status"] == 503
        assert "parked after" in server.log()
        # Later events flow past it.
        down = False
        [tag] = mutate(server, ("tag", "t"))
        wait_for("the later event", receiver.accepted)
        assert [f["sid"] for f in receiver.frames()] == [tag]
        # Replay: the parked batch again, with its webhook-id.
        replayed = httpx.post(
            f"{server.url}/admin/webhooks/parked/{parked[0]['id']}/replay", json={}, timeout=10
        )
        assert replayed.status_code == 200 and replayed.json() == {"replayed": 1}
        wait_for("the replayed batch", lambda: len(receiver.accepted()) == 2)
        assert receiver.accepted()[1].id == parked[0]["webhook_id"]
        assert sorted(f["sid"] for f in receiver.frames()) == [card, tag]
        assert all(f["t"] in ("card", "tag") for r in receiver.all() for f in r.json["frames"])
        wait_for("nothing parked", lambda: not admin(server)["parked"])
        missing = httpx.post(
            f"{server.url}/admin/webhooks/parked/{parked[0]['id']}/replay", json={}
        )
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert httpx.post(f"{server.url}/admin/webhooks/parked/replay", json={}).json() == {
            "replayed": 0
        }


def test_the_throttle_is_per_record(tmp_path: Path, receiver: Receiver) -> None:
    # A window longer than the test: within it a record's changes go only once a batch
    # is full (--webhook-max-batch), or with another record's first change.
    args = ("--webhook", receiver.url, *FAST, "--webhook-throttle-ms", "600000")
    with ServerProcess(tmp_path, *args, "--webhook-max-batch", "10") as server:

        def waiting() -> dict[str, Any] | None:
            """The org's cursor and backlog once nothing is in flight and what is
            left waits for its window."""
            state = admin(server)
            orgs = [o for e in state["endpoints"] for o in e["orgs"]]
            got = [f["sid"] for f in receiver.frames()]
            if state["pending"] or not orgs or not got or orgs[0]["cursor"] != got[-1]:
                return None
            return orgs[0] if orgs[0]["backlog"] < 10 else None

        sids = []
        for i in range(30):
            # A typing user: one record changed again and again.
            sids += mutate(server, ("card", "a"), op="i" if i == 0 else "u", n=i)
        org = wait_for("the typing settled", waiting)
        got = [f["sid"] for f in receiver.frames()]
        assert got == sids[: len(got)] and org["backlog"] == len(sids) - len(got)  # in order
        # Its first change went at once (with what came in the sender's burst window);
        # then only full batches: 30 changes, at most 4 POSTs.
        sizes = [len(r.json["frames"]) for r in receiver.all()]
        assert sizes[1:] == [10] * (len(sizes) - 1) and len(sizes) <= 4, sizes
        # Another record's first change does not wait for the typed record's window:
        # it goes at once, after the typed frames still waiting (sid order).
        sids += mutate(server, ("card", "b"), op="i", n=0)
        wait_for("card b delivered", lambda: len(receiver.frames()) == len(sids))
        assert [f["sid"] for f in receiver.frames()] == sids  # all, in order, none merged
        assert receiver.frames()[-1]["id"] == "b"
        # Both were sent within the window now: the next change of either waits (shown,
        # not waited for).
        [late] = mutate(server, ("card", "a"), op="u", n="late")
        org = wait_for("the late frame in the backlog", waiting)
        assert org["cursor"] == sids[-1] and org["backlog"] == 1 and late == sids[-1] + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook", "ftp://x/hook", "--webhook-secret", NEW_SECRET], "http:// or https://"),
        (["--webhook", "http://127.0.0.1:9/h"], "--webhook needs --webhook-secret"),
        (["--webhook", "http://127.0.0.1:9/h", "--webhook-secret", "s3cr3t"], "whsec_"),
        (
            ["--webhook", "card/x=http://127.0.0.1:9/h", "--webhook-secret", NEW_SECRET],
            "bad record type",
        ),
        (
            [
                "--webhook-secret",
                NEW_SECRET,
                "--webhook-backoff-seconds",
                "5",
                "--webhook-backoff-max-seconds",
                "1",
            ],
            "--webhook-backoff-max-seconds",
        ),
    ],
)
def test_bad_webhook_flags_are_refused_at_startup(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crdt_sync",
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CRDT_SYNC_WEBHOOK_SECRET": ""}
        if "--webhook-secret" not in args
        else None,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "s3cr3t" not in proc.stderr and NEW_SECRET not in proc.stderr
