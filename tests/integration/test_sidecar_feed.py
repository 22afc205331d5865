"""The delta feed as a sidecar's host app and a WebSocket-less client use it: long-poll,
cacheable pages, and the frames of one mutation request in one message everywhere."""

from __future__ import annotations

import functools
import json
import signal
import time
from typing import Any

import anyio
import httpx
import pytest
import websockets

from tests.integration.auth_support import SECRET, bearer, token
from tests.integration.test_sync_feed import FAST, feed_url, mutate, read_sse

pytestmark = pytest.mark.anyio


def three(prefix: str = "") -> list[dict[str, Any]]:
    return [
        {"t": "task", "id": f"{prefix}1", "op": "i", "p": {"n": 1}},
        {"t": "task", "id": f"{prefix}2", "op": "i", "p": {"n": 2}},
        {"t": "note", "id": f"{prefix}3", "op": "i", "p": {"n": 3}},
    ]


async def post_batch(http: httpx.AsyncClient, mutations: list[dict]) -> dict:
    response = await http.post("/sync/v1/mutations", json={"mutations": mutations})
    assert response.status_code == 200, response.text
    return response.json()


# -- long-poll -----------------------------------------------------------------------


async def test_a_long_poll_returns_when_a_mutation_commits(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        [first] = await mutate(http, {"t": "task", "id": "0", "op": "i", "p": {"n": 0}})
        answer: dict[str, Any] = {}
        polled = anyio.Event()

        async def poll() -> None:
            polled.set()
            response = await http.get(
                "/sync/v1/delta",
                params={"since": first["sid"], "live": "1", "timeout_ms": "50000"},
            )
            answer["response"] = response
            answer["at"] = time.monotonic()

        with anyio.fail_after(30):  # far below the 50 s the poll would wait for nothing
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await polled.wait()
                await anyio.sleep(0.3)  # let it be held (not part of any assertion)
                assert "response" not in answer, "a live poll with nothing new must wait"
                [made] = await mutate(http, {"t": "task", "id": "1", "op": "i", "p": {"n": 1}})
        response = answer["response"]
        assert response.status_code == 200
        body = response.json()
        assert [f["sid"] for f in body["frames"]] == [made["sid"]]
        assert body["next"] == made["sid"] and body["up_to_date"] is True
        assert body["more"] is False
        assert response.headers["cache-control"] == "no-store"


async def test_a_long_poll_with_nothing_new_answers_an_empty_page_after_its_timeout(
    server_factory,
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        [made] = await mutate(http, {"t": "task", "id": "0", "op": "i", "p": {"n": 0}})
        began = time.monotonic()
        response = await http.get(
            "/sync/v1/delta", params={"since": made["sid"], "live": "1", "timeout_ms": "400"}
        )
        assert time.monotonic() - began >= 0.4, "it must have waited its timeout"
        assert response.status_code == 200
        assert response.json() == {
            "frames": [],
            "next": made["sid"],
            "more": False,
            "up_to_date": True,
        }
        # Frames of another type move the cursor but do not end the wait early.
        async with anyio.create_task_group() as tg:
            result: dict[str, Any] = {}

            async def poll() -> None:
                result["r"] = await http.get(
                    "/sync/v1/delta",
                    params={"since": made["sid"], "t": "note", "live": "1", "timeout_ms": "1500"},
                )

            tg.start_soon(poll)
            await anyio.sleep(0.2)
            [other] = await mutate(http, {"t": "task", "id": "1", "op": "i", "p": {"n": 1}})
        body = result["r"].json()
        assert body["frames"] == [] and body["up_to_date"] is True
        assert body["next"] == other["sid"]


async def test_long_poll_parameters_are_checked(server_factory) -> None:
    server = server_factory(*FAST, "--max-long-poll-ms", "5000", "--max-long-polls", "1")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        for params, word in [
            ({"live": "yes"}, "live"),
            ({"live": "1", "timeout_ms": "5001"}, "timeout_ms"),
            ({"live": "1", "timeout_ms": "-1"}, "timeout_ms"),
        ]:
            response = await http.get("/sync/v1/delta", params=params)
            assert response.status_code == 400, params
            assert response.json()["error"] == "invalid_parameter"
            assert word in response.json()["detail"]
        # One long-poll at most (--max-long-polls 1): the second is told to come back.
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    http.get, "/sync/v1/delta", params={"live": "1", "timeout_ms": "3000"}
                )
            )
            await anyio.sleep(0.5)
            second = await http.get("/sync/v1/delta", params={"live": "1", "timeout_ms": "100"})
        assert second.status_code == 503
        assert second.json()["error"] == "too_many_long_polls"
        assert second.headers["retry-after"] == "1"


async def test_held_long_polls_answer_at_shutdown(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        result: dict[str, Any] = {}

        async def poll() -> None:
            result["r"] = await http.get(
                "/sync/v1/delta", params={"live": "1", "timeout_ms": "55000"}
            )

        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.5)
                server.proc.send_signal(signal.SIGTERM)
        assert result["r"].status_code == 200
        assert result["r"].json()["up_to_date"] is True


async def test_a_stale_since_gets_a_reset_that_carries_the_cursor(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        [made] = await mutate(http, {"t": "task", "id": "0", "op": "i", "p": {"n": 0}})
        for live in ("0", "1"):
            response = await http.get("/sync/v1/delta", params={"since": 999, "live": live})
            assert response.status_code == 410
            body = response.json()
            assert body["error"] == "since_too_old" and body["up_to_date"] is False
            assert body["next"] == made["sid"] and body["bootstrap"] == "/sync/v1/records"


# -- cacheable pages -----------------------------------------------------------------


async def test_a_fixed_page_has_a_strong_etag_and_is_immutable(server_factory) -> None:
    server = server_factory(*FAST, "--delta-cache-max-age", "600")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        for i in range(3):
            await mutate(http, {"t": "task", "id": str(i), "op": "i", "p": {"n": i}})
        fixed = await http.get("/sync/v1/delta", params={"since": 0, "limit": 2})
        assert fixed.status_code == 200 and fixed.json()["more"] is True
        assert fixed.json()["up_to_date"] is False
        etag = fixed.headers["etag"]
        assert etag.startswith('"') and not etag.startswith("W/")
        assert fixed.headers["cache-control"] == "public, max-age=600, immutable"
        # Auth is off: every caller sees the same page.
        assert "authorization" not in fixed.headers.get("vary", "").lower()
        again = await http.get(
            "/sync/v1/delta", params={"since": 0, "limit": 2}, headers={"If-None-Match": etag}
        )
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=600, immutable"
        other = await http.get(
            "/sync/v1/delta",
            params={"since": 0, "limit": 2},
            headers={"If-None-Match": '"something-else"'},
        )
        assert other.status_code == 200 and other.json() == fixed.json()
        # The tail is never cached, and has no ETag.
        tail = await http.get("/sync/v1/delta", params={"since": 2, "limit": 2})
        assert tail.json()["up_to_date"] is True
        assert tail.headers["cache-control"] == "no-store" and "etag" not in tail.headers


# -- one mutation request, one message ------------------------------------------------


async def test_a_batch_of_three_mutations_reaches_every_transport_as_one_message(
    server_factory,
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        await mutate(http, {"t": "task", "id": "0", "op": "i", "p": {"n": 0}})
        async with websockets.connect(feed_url(server, since=1)) as ws:
            await anyio.sleep(0.3)  # caught up and live (the read below waits for the batch)
            long_poll: dict[str, Any] = {}

            async def poll() -> None:
                long_poll["r"] = await http.get(
                    "/sync/v1/delta", params={"since": 1, "live": "1", "timeout_ms": "20000"}
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.3)
                answer = await post_batch(http, three())
            with anyio.fail_after(10):
                message = json.loads(await ws.recv())
        tx = answer["tx"]
        assert isinstance(tx, str) and tx
        assert all(r["tx"] == tx for r in answer["results"])
        sids = [r["sid"] for r in answer["results"]]
        assert sids == [2, 3, 4]
        # WebSocket: one message holding the three.
        assert [f["sid"] for f in message] == sids
        assert {f["tx"] for f in message} == {tx}
        assert all("tx" not in f["ctx"] for f in message)
        # Long-poll: one page.
        assert [f["sid"] for f in long_poll["r"].json()["frames"]] == sids
        # HTTP catch-up: a page never ends inside the request's frames.
        page = (await http.get("/sync/v1/delta", params={"since": 1, "limit": 1})).json()
        assert [f["sid"] for f in page["frames"]] == sids and page["next"] == 4
        # SSE: one event of type tx with the three, its id the last sid.
        [event] = await read_sse(http, {}, {"since": "1"}, count=1)
        assert event["event"] == "tx" and event["id"] == "4"
        data = json.loads(event["data"])
        assert data["tx"] == tx and [f["sid"] for f in data["frames"]] == sids
        # A single mutation is a request of its own: its own tx, a plain SSE event.
        [alone] = await mutate(http, {"t": "task", "id": "9", "op": "i", "p": {"n": 9}})
        assert alone["tx"] != tx
        [plain] = await read_sse(http, {}, {"since": "4"}, count=1)
        assert "event" not in plain and json.loads(plain["data"])["tx"] == alone["tx"]


async def test_a_replayed_batch_answers_its_original_tx(server_factory) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        batch = [dict(m, client_tx_id=f"k{i}") for i, m in enumerate(three())]
        first = await post_batch(http, batch)
        again = await post_batch(http, batch)
        assert [r["tx"] for r in again["results"]] == [first["tx"]] * 3
        assert all(r["replayed"] for r in again["results"])


async def test_with_auth_pages_vary_on_the_credentials(server_factory) -> None:
    server = server_factory("--auth-secret", SECRET, *FAST)
    alice = bearer(token("alice", org="orga"))
    bob = bearer(token("bob", org="orgb"))
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        for who in (alice, bob):
            for i in range(3):
                m = {"t": "task", "id": str(i), "op": "i", "p": {"by": who["Authorization"][-6:]}}
                response = await http.post(
                    "/sync/v1/mutations", json={"mutations": [m]}, headers=who
                )
                assert response.status_code == 200
        pages = {}
        for name, who in (("alice", alice), ("bob", bob)):
            page = await http.get("/sync/v1/delta", params={"since": 0, "limit": 2}, headers=who)
            assert page.status_code == 200 and page.json()["more"] is True
            vary = {v.strip().lower() for v in page.headers["vary"].split(",")}
            assert {"authorization", "cookie"} <= vary
            pages[name] = page
        # Same URL, other tenants: other pages, other ETags.
        assert pages["alice"].json() != pages["bob"].json()
        assert pages["alice"].headers["etag"] != pages["bob"].headers["etag"]
        tail = await http.get("/sync/v1/delta", params={"since": 2}, headers=alice)
        assert tail.headers["cache-control"] == "no-store"
        assert "authorization" in tail.headers["vary"].lower()
