"""How a store outage is answered, pinned where it is cheap: the health check of an
idle node probes its store (a real SQLite store made read-only), a mutation batch the
store refused whole is a 503, and a room that could not load for the store is told
apart from a doc that cannot be loaded."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from crdt_sync import app as app_module
from crdt_sync.errors import store_failure
from crdt_sync.sync_api import _batch_response
from persistence.store import StoreUnavailableError
from rooms.room import RoomLoadError
from tests.unit.app_under_test import running_app

pytestmark = pytest.mark.anyio

TIMEOUT = 10


def query_only(on: bool):
    def switch(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")

    return switch


async def test_an_idle_node_notices_its_store_failing_and_recovering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "IDLE_PROBE_SECONDS", 0.0)  # every check is "idle"
    with anyio.fail_after(TIMEOUT):
        async with running_app(tmp_path) as (runtime, http):
            assert (await http.get("/readyz")).status_code == 200
            assert runtime.store is not None
            await runtime.store.run_in_writer(query_only(True))  # type: ignore[attr-defined]
            # No client wrote anything: the health check's own probe finds out.
            response = await http.get("/readyz")
            assert response.status_code == 503, response.text
            assert "store" in response.json()["problems"]
            await runtime.store.run_in_writer(query_only(False))  # type: ignore[attr-defined]
            # Nor does any client write now: the probe alone clears it.
            assert (await http.get("/readyz")).status_code == 200


def result(status: int, error: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": 0, "t": "task", "id": "1", "op": "i", "status": status}
    if error is not None:
        out |= {"error": error, "detail": f"{error} detail"}
    return out


def test_a_batch_the_store_refused_whole_is_a_503_with_its_results() -> None:
    results = [result(503, "store_unavailable"), result(403, "forbidden")]
    response = _batch_response(results, "tx1")
    assert response.status_code == 503
    body = json.loads(bytes(response.body))
    assert body["error"] == "store_unavailable"
    assert body["detail"].startswith("1 of 2 not stored: store_unavailable detail")
    assert body["results"] == results


def test_a_batch_with_anything_applied_or_no_store_failure_is_a_200() -> None:
    partly = [result(201), result(503, "store_unavailable")]
    assert _batch_response(partly, "tx1").status_code == 200
    refused = [result(409, "exists"), result(403, "forbidden")]
    response = _batch_response(refused, "tx1")
    assert response.status_code == 200
    assert json.loads(bytes(response.body)) == {"results": refused, "tx": "tx1"}


def test_a_load_that_failed_for_the_store_is_a_store_failure() -> None:
    cause = StoreUnavailableError("PostgreSQL is unavailable")
    try:
        raise RoomLoadError("cannot load") from cause
    except RoomLoadError as exc:
        assert store_failure(exc) is cause
    try:
        raise RoomLoadError("cannot load") from ValueError("not a Yjs update")
    except RoomLoadError as exc:
        assert store_failure(exc) is None
    assert store_failure(cause) is cause
