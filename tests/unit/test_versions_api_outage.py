"""The version API while the store takes no writes (a real SQLite store made
read-only): taking and restoring answer 503 ``store_unavailable``, reads go on, and
the authors of the failed version are credited to the next one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from pycrdt import Doc, Text

from tests.unit.app_under_test import running_app

pytestmark = pytest.mark.anyio

TIMEOUT = 10


def query_only(on: bool):
    def switch(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")

    return switch


async def test_writes_of_versions_answer_503_while_the_store_is_read_only(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running_app(tmp_path) as (runtime, http):
            doc = Doc()
            doc["body"] = text = Text("one")
            assert (await http.post("/docs/d/update", content=doc.get_update())).status_code == 200
            first = await http.post("/docs/d/versions")
            assert first.status_code == 201, first.text
            before = doc.get_state()
            text += " two"
            assert (await http.post("/docs/d/update", content=doc.get_update(before))).is_success
            assert runtime.store is not None
            await runtime.store.run_in_writer(query_only(True))  # type: ignore[attr-defined]
            refused = await http.post("/docs/d/versions")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "store_unavailable"
            restore = await http.post(f"/docs/d/versions/{first.json()['version']}/restore")
            assert restore.status_code == 503, restore.text
            listed = await http.get("/docs/d/versions")
            assert listed.status_code == 200 and len(listed.json()["versions"]) == 1
            await runtime.store.run_in_writer(query_only(False))  # type: ignore[attr-defined]
            again = await http.post("/docs/d/versions")
            assert again.status_code == 201, again.text
            assert again.json()["authors"] == ["anonymous"]
