"""``/healthz`` and ``/readyz`` tell the truth: the app runs in-process on a real store
(its writer made read-only, a supervised loop failing) and is asked over ASGI."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Doc, Text

from persistence import StoreWriteError
from tests.unit.app_under_test import running_app

pytestmark = pytest.mark.anyio

TIMEOUT = 10


def update(text: str) -> bytes:
    doc = Doc()
    doc["body"] = Text(text)
    return doc.get_update()


def query_only(on: bool):
    def switch(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")

    return switch


async def check(http: httpx.AsyncClient, path: str, status: int) -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == status, response.text
    return response.json()


async def test_healthz_fails_when_store_cannot_write(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_app(tmp_path) as (runtime, http):
            body = await check(http, "/healthz", 200)
            assert body["status"] == "ok"
            assert {"rooms", "connections", "frame_subscribers"} <= body.keys()
            assert runtime.store is not None
            await runtime.store.run_in_writer(query_only(True))  # type: ignore[attr-defined]
            refused = await http.post("/docs/notes/1/update", content=update("x"))
            assert refused.status_code == 503, refused.text
            with pytest.raises(StoreWriteError):  # reported once: close() will not raise
                await runtime.store.flush()
            body = await check(http, "/healthz", 503)
            assert body["status"] == "degraded"
            assert body["problems"] == {"store": "write failing"}
            assert (await check(http, "/readyz", 503))["status"] == "degraded"
            # Writable again: the health check's probe commits, and it is ok at once.
            await runtime.store.run_in_writer(query_only(False))  # type: ignore[attr-defined]
            assert "problems" not in await check(http, "/healthz", 200)
            assert (await check(http, "/readyz", 200))["status"] == "ready"
            stored = await http.post("/docs/notes/1/update", content=update("y"))
            assert stored.status_code == 200, stored.text


async def test_healthz_and_readyz_fail_while_a_supervised_loop_is_down(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_app(tmp_path) as (runtime, http):
            supervisor = runtime.supervisor
            supervisor.min_backoff = 60  # it stays down for the test

            async def broken() -> None:
                raise RuntimeError("boom")

            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.loop, "broken", broken)
                while supervisor.failures["broken"] < 1:
                    await anyio.sleep(0.001)
                body = await check(http, "/healthz", 503)
                assert body["problems"] == {"task broken": "restarting after: RuntimeError: boom"}
                assert (await check(http, "/readyz", 503))["status"] == "degraded"
                metrics = (await http.get("/metrics")).text
                assert 'crdt_sync_task_failures_total{task="broken"} 1.0' in metrics
                assert 'crdt_sync_loop_up{task="broken"} 0.0' in metrics
                for loop in ("frame_flush", "frame_trim", "presence_push", "liveness"):
                    assert f'crdt_sync_loop_up{{task="{loop}"}} 1.0' in metrics
                tg.cancel_scope.cancel()


async def test_readyz_is_ready_while_serving_and_503_while_shutting_down(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_app(tmp_path) as (runtime, http):
            assert await check(http, "/readyz", 200) == {"status": "ready"}
            await runtime.shutdown()
            assert (await check(http, "/readyz", 503))["status"] == "shutting_down"
            assert (await check(http, "/healthz", 503))["status"] == "shutting_down"
