"""Races between requests, through a real server process (the unit tests in
``tests/unit/test_mutation_races.py`` and ``test_room_races.py`` force each interleaving;
these show the same guarantees hold for concurrent HTTP clients)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import httpx
import pytest

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")


async def post_mutations(http: httpx.AsyncClient, *mutations: dict[str, Any]) -> list[dict]:
    response = await http.post("/sync/v1/mutations", json={"mutations": list(mutations)})
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def test_crossed_idempotency_keys_do_not_deadlock(server_factory) -> None:
    server = server_factory(*FAST)
    pairs = 20
    answers: dict[tuple[int, str], list[dict]] = {}

    def insert(i: int, which: str) -> dict[str, Any]:
        return {
            "t": "task",
            "id": f"{which}{i}",
            "op": "i",
            "p": {"n": i},
            "client_tx_id": f"{which}{i}",
        }

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

        async def request(i: int, order: str) -> None:
            answers[(i, order)] = await post_mutations(http, *(insert(i, w) for w in order))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(pairs):
                    tg.start_soon(request, i, "ab")
                    tg.start_soon(request, i, "ba")
            later = await post_mutations(http, insert(0, "a"), insert(0, "b"))
        for i in range(pairs):
            ab, ba = answers[(i, "ab")], answers[(i, "ba")]
            assert ab[0]["sid"] == ba[1]["sid"] and ab[1]["sid"] == ba[0]["sid"]
            assert sorted(r["status"] for r in ab + ba) == [201, 201, 201, 201]
            assert sum(bool(r.get("replayed")) for r in ab + ba) == 2
        assert all(r["replayed"] for r in later)


async def test_concurrent_inserts_of_one_record_one_wins(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        results: list[dict] = []

        async def insert(n: int) -> None:
            results.extend(
                await post_mutations(
                    http, {"t": "task", "id": "x", "op": "i", "p": {"n": n}, "base_sid": 0}
                )
            )

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(insert, n)
        assert sorted(r["status"] for r in results) == [201] + [409] * 9, results
        frames = (await http.get("/sync/v1/delta", params={"since": 0})).json()["frames"]
        assert [f["op"] for f in frames] == ["i"]


async def test_delete_racing_batches_answers_each_mutation(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

        async def run_batch(name: str, into: list[httpx.Response]) -> None:
            batch = [
                {"t": "task", "id": name, "op": "u", "p": {"n": n}, "base_sid": 0}
                for n in range(1, 31)
            ]
            into.append(await http.post("/sync/v1/mutations", json={"mutations": batch}))

        async def delete(name: str, into: list[httpx.Response]) -> None:
            into.append(await http.delete(f"/docs/task/{name}"))

        for round_ in range(5):
            name = f"r{round_}"
            [made] = await post_mutations(http, {"t": "task", "id": name, "op": "i", "p": {"n": 0}})
            assert made["status"] == 201
            responses: list[httpx.Response] = []
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_batch, name, responses)
                    tg.start_soon(delete, name, responses)
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            [results] = [r.json()["results"] for r in responses if "results" in r.json()]
            statuses = [r["status"] for r in results]
            assert set(statuses) <= {200, 404}, statuses
            # Every update after the delete finds no record: 200s, then 404s.
            assert statuses == sorted(statuses), statuses
            records = (await http.get("/sync/v1/records", params={"t": "task"})).json()
            assert name not in {r["id"] for r in records["records"]}


def test_room_idle_seconds_zero_is_refused_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "serve", "--room-idle-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--room-idle-seconds must be >= 0.1" in result.stderr
