"""Versions on several nodes (PostgreSQL + Redis): each node versions and credits only
the changes that came in through it, and a restore made on one node reaches an editor
connected to another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import connect
from tests.cluster import Cluster
from tests.integration.auth_support import SECRET, bearer, token
from tests.store_backends import throwaway_database

pytestmark = pytest.mark.anyio

TIMEOUT = 30
ARGS = (
    "--auth-secret",
    SECRET,
    "--version-every-updates",
    "3",
    "--version-idle-seconds",
    "0",
    "--log-level",
    "info",
)


async def until(predicate: Any, what: str) -> Any:
    with anyio.fail_after(TIMEOUT):
        while True:
            value = await predicate()
            if value:
                return value
            await anyio.sleep(0.05)


async def test_each_node_versions_its_own_changes_and_a_restore_crosses_nodes(
    tmp_path: Path,
) -> None:
    ann, bob = token("ann", "orga"), token("bob", "orga")
    name = "notes/cluster-versions"
    with throwaway_database() as url, Cluster(tmp_path, url, size=2, args=ARGS) as cluster:
        one, two = cluster.nodes
        async with (
            httpx.AsyncClient(base_url=two.url, timeout=20, headers=bearer(bob)) as http,
            connect(one.ws_url, name, token=ann) as a,
            connect(two.ws_url, name, token=bob) as b,
        ):
            with anyio.fail_after(TIMEOUT):
                await a.synced()
                await b.synced()
            text_a = a.doc.get("body", type=Text)
            text_b = b.doc.get("body", type=Text)

            async def versions() -> list[dict[str, Any]]:
                response = await http.get(f"/docs/{name}/versions")
                return response.json()["versions"] if response.status_code == 200 else []

            for ch in "abc":  # three changes through node one: its version, by ann
                text_a += ch
                await a.flush()
            first = await until(versions, "node one's version")
            assert [v["authors"] for v in first] == [["ann"]]

            async def b_sees(text: str) -> bool:
                return str(text_b) == text

            await until(lambda: b_sees("abc"), "b to see a's edits")
            for ch in "de":  # two through node two: below its trigger
                text_b += ch
                await b.flush()

            async def a_sees(text: str) -> bool:
                return str(text_a) == text

            await until(lambda: a_sees("abcde"), "a to see b's edits")
            assert len(await versions()) == 1  # node one did not count b's edits
            text_b += "f"
            await b.flush()

            async def two_versions() -> list[dict[str, Any]] | None:
                found = await versions()
                return found if len(found) == 2 else None

            both = await until(two_versions, "node two's version")
            assert [v["authors"] for v in both] == [["bob"], ["ann"]]

            restored = await http.post(f"/docs/{name}/versions/{first[0]['version']}/restore")
            assert restored.status_code == 200, restored.text
            await until(lambda: a_sees("abc"), "the restore to reach a, on the other node")
            await until(lambda: b_sees("abc"), "the restore to reach b")
            text_a += "!"
            await until(lambda: b_sees("abc!"), "a's later edit to reach b")
            assert not a.closed.is_set() and not b.closed.is_set()
