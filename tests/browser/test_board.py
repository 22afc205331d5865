"""The live record board (``web/board.html``) in real browsers against a real server.

The board knows nothing about CRDTs: it bootstraps from ``/sync/v1/records``,
follows the SyncFrame WebSocket and writes with ``POST /sync/v1/mutations``. The
tests check it against what the server says over HTTP, against a second browser,
and against a Python Yjs editor typing into a record. Every wait is bounded.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import connect
from tests.browser.conftest import PageUnderTest
from tests.cluster import free_port
from tests.server_process import ServerProcess

if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="the Python package `playwright` is not installed")
from playwright.async_api import (
    Browser,
    Page,
    Route,
    WebSocketRoute,
    expect,
)

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")
WAIT_MS = 10_000
COLUMNS = ("open", "doing", "done", "other")


class Board(PageUnderTest):
    """One browser context with the board open on record type ``t``."""

    # Chromium logs the requests the tests abort on purpose and the 429s the page
    # waits out; neither is a page bug.
    EXPECTED_CONSOLE = ("net::ERR_FAILED", "responded with a status of 429")

    @classmethod
    async def open(
        cls,
        browser: Browser,
        server: ServerProcess,
        name: str,
        t: str = "task",
        before: Callable[[Page], Awaitable[None]] | None = None,
        viewport: tuple[int, int] = (1280, 760),
    ) -> Board:
        """The board, live; ``before`` runs first (routes, a fake clock)."""
        width, height = viewport
        context = await browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT_MS)
        board = cls(context, await context.new_page())
        if before is not None:
            await before(board.page)
        await board.goto(server, t)
        await board.page.fill("#user-name", name)
        await board.page.press("#user-name", "Tab")  # commits the name (`change`)
        return board

    async def goto(self, server: ServerProcess, t: str = "task") -> None:
        await self.page.goto(f"{server.url}/web/board.html?t={t}")
        await self.wait_live()

    async def wait_live(self) -> None:
        await expect(self.status).to_have_attribute("data-synced", "true", timeout=WAIT_MS)
        await expect(self.status).to_have_attribute("data-status", "connected")

    @property
    def status(self) -> Any:
        return self.page.locator("#status")

    def card(self, record_id: str) -> Any:
        return self.page.locator(f'.rec[data-id="{record_id}"]')

    def in_column(self, column: str, record_id: str) -> Any:
        return self.page.locator(f'.column[data-column="{column}"] .rec[data-id="{record_id}"]')

    async def ids_by_column(self) -> dict[str, list[str]]:
        return await self.page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('.column')].map(
                (col) => [col.dataset.column,
                          [...col.querySelectorAll('.rec')].map((card) => card.dataset.id)]))"""
        )

    async def client_id(self) -> str:
        return await self.page.evaluate("() => window.crdtBoard.clientId")

    async def last_sid(self) -> int:
        return int(await self.page.locator("#last-sid").get_attribute("data-sid") or "-1")

    async def close(self) -> None:
        assert self.errors == []
        await self.context.close()


async def mutate(http: httpx.AsyncClient, *mutations: dict) -> list[dict]:
    response = await http.post("/sync/v1/mutations", json={"mutations": list(mutations)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert all(r["status"] in (200, 201) for r in results), results
    return results


async def records(http: httpx.AsyncClient, t: str = "task") -> dict[str, dict]:
    response = await http.get("/sync/v1/records", params={"t": t, "limit": 1000})
    assert response.status_code == 200, response.text
    return {r["id"]: r["fields"] for r in response.json()["records"]}


async def frames(http: httpx.AsyncClient, t: str = "task") -> list[dict]:
    response = await http.get("/sync/v1/delta", params={"since": 0, "limit": 1000, "t": t})
    assert response.status_code == 200, response.text
    return response.json()["frames"]


async def stored_queue(page: Page, name: str) -> list[dict]:
    """The SDK's offline queue ``name`` as stored in the page's IndexedDB, in order."""
    return await page.evaluate(
        """(name) => new Promise((resolve, reject) => {
            const open = indexedDB.open(name)
            open.onerror = () => reject(open.error)
            open.onsuccess = () => {
                const db = open.result
                const get = db.transaction('mutations').objectStore('mutations').getAll()
                get.onerror = () => reject(get.error)
                get.onsuccess = () => {
                    db.close()
                    resolve(get.result.sort((a, b) => a.seq - b.seq))
                }
            }
        })""",
        name,
    )


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


def insert(record_id: str, **fields: Any) -> dict:
    return {"t": "task", "id": record_id, "op": "i", "p": fields}


# -- (a) + (b): columns, live inserts, moves as mutations seen by a second page -------------


async def test_cards_in_columns_and_moves_are_live(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(
            http,
            insert(
                "1",
                title="Write the spec",
                status="open",
                owner="ann",
                points=3,
                body="Columns by status.\nCards update as frames arrive.",
            ),
            insert("2", title="Build the board", status="doing", tags=["web", "ui"]),
            insert("3", title="Ship it", status="done"),
            insert("4", title="Waiting on legal", status="blocked"),
            insert("5", estimate=2),  # no title, no status
            {"t": "note", "id": "x", "op": "i", "p": {"title": "another type", "status": "open"}},
        )
        alice = await Board.open(browser, server, "alice")
        assert await alice.ids_by_column() == {
            "open": ["1"],
            "doing": ["2"],
            "done": ["3"],
            "other": ["4", "5"],
        }
        await expect(alice.card("1").locator(".rec-title")).to_have_text("Write the spec")
        await expect(alice.card("1").locator('.chip[data-field="owner"]')).to_contain_text("ann")
        await expect(alice.card("2").locator('.chip[data-field="tags"]')).to_contain_text("web")
        await expect(alice.card("5").locator(".rec-title")).to_have_text("5")  # no title: the id
        await expect(alice.card("1").locator("a.rec-open")).to_have_attribute(
            "href", "./?doc=task%2F1"
        )

        # Created and changed over HTTP after the page loaded: live.
        await mutate(http, insert("10", title="Late arrival", status="doing"))
        await expect(alice.in_column("doing", "10")).to_be_visible()
        [unowned] = await mutate(http, {"t": "task", "id": "1", "op": "u", "p": {"owner": None}})
        await expect(alice.card("1").locator('.chip[data-field="owner"]')).to_have_count(0)
        await expect(alice.page.locator("#last-sid")).to_have_text(str(unowned["sid"]))

        # Bob watches while Alice moves card 2 with its select: a mutation, seen live.
        bob = await Board.open(browser, server, "bob")
        await expect(bob.in_column("doing", "2")).to_be_visible()
        await alice.card("2").locator("select.rec-move").select_option("done")
        await expect(alice.in_column("done", "2")).to_be_visible()
        await expect(bob.in_column("done", "2")).to_be_visible()
        await expect(bob.in_column("doing", "2")).to_have_count(0)
        await wait_until(lambda: _status_is(http, "2", "done"))
        [moved] = [f for f in await frames(http) if f["id"] == "2" and f["op"] == "u"]
        assert moved["p"] == {"status": "done"}
        assert moved["ctx"]["client_id"] == await alice.client_id()
        assert moved["ctx"]["client_tx_id"].startswith(await alice.client_id())

        # Opened, card 1 shows who is looking at it: Alice herself.
        await alice.card("1").locator(".rec-toggle").click()
        await expect(alice.card("1").locator(".peer.self")).to_contain_text("alice")
        await alice.page.mouse.move(0, 0)
        await alice.page.screenshot(path=str(artifacts / "board.png"))
        await bob.close()
        await alice.close()


async def _status_is(http: httpx.AsyncClient, record_id: str, status: str) -> bool:
    return (await records(http)).get(record_id, {}).get("status") == status


# -- (c): a Yjs editor typing into `body`; presence on the expanded card --------------------


async def test_yjs_editor_typing_shows_live_with_presence(
    browser: Browser, server_factory: Any
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("7", title="Typed live", status="doing"))
    board = await Board.open(browser, server, "carol")
    card = board.card("7")
    await expect(card).to_be_visible()
    await expect(card.locator(".rec-body")).to_be_hidden()  # no body field yet

    with anyio.fail_after(30):
        async with connect(server.ws_url, "task/7") as editor:
            await editor.synced()
            editor.awareness.set_local_state({"user": {"name": "py-editor", "color": "#2f8fd8"}})
            editor.doc["body"] = body = Text()
            for char in "Hello from":
                body += char
                await anyio.sleep(0.01)
            await expect(card.locator(".rec-body")).to_have_text("Hello from")
            # Expanding the card makes the page a viewer of the record: it sees the
            # editor, and the editor sees it as an awareness peer.
            await card.locator(".rec-toggle").click()
            await expect(card).to_have_attribute("data-expanded", "true")
            presence = card.locator(".rec-presence .peer")
            await expect(presence).to_have_count(2)
            await expect(presence.filter(has_text="py-editor")).to_have_attribute(
                "data-kind", "editor"
            )
            await expect(presence.filter(has_text="carol")).to_have_attribute("data-kind", "viewer")
            await expect(card.locator(".peer.self .name")).to_have_text("carol")
            while not any(s.get("viewer") for s in editor.remote_states.values()):
                await anyio.sleep(0.05)
            [viewer] = [s for s in editor.remote_states.values() if s.get("viewer")]
            assert viewer["user"]["name"] == "carol"

            for char in " Python, line one\nand line two.":
                body += char
                await anyio.sleep(0.01)
            text = "Hello from Python, line one\nand line two."
            await expect(card.locator(".rec-body")).to_have_text(text)

            # Collapsing leaves: the editor no longer sees the viewer.
            await card.locator(".rec-toggle").click()
            await expect(card).to_have_attribute("data-expanded", "false")
            while any(s.get("viewer") for s in editor.remote_states.values()):
                await anyio.sleep(0.05)
    # The editor leaves; the card keeps the last text.
    await expect(card.locator(".rec-body")).to_have_text(text)
    await board.close()


# -- (d): delete --------------------------------------------------------------------------


async def test_delete_removes_the_card_in_both_pages(browser: Browser, server_factory: Any) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("a", title="Keep", status="open"), insert("b", title="Drop"))
        alice = await Board.open(browser, server, "alice")
        bob = await Board.open(browser, server, "bob")
        await expect(bob.in_column("other", "b")).to_be_visible()
        await alice.card("b").locator("button.rec-delete").click()
        await expect(alice.card("b")).to_have_count(0)
        await expect(bob.card("b")).to_have_count(0)
        await expect(bob.card("a")).to_be_visible()
        assert set(await records(http)) == {"a"}
        # Created in one page, it shows in the other.
        await alice.page.fill("#new-id", "c")
        await alice.page.fill("#new-title", "From the form")
        await alice.page.press("#new-title", "Enter")
        await expect(bob.in_column("open", "c")).to_contain_text("From the form")
        assert (await records(http))["c"] == {"title": "From the form", "status": "open"}
        await bob.close()
        await alice.close()


# -- (e): the offline queue -----------------------------------------------------------------


async def test_offline_queue_is_kept_and_replayed_once(
    browser: Browser, server_factory: Any
) -> None:
    server = server_factory(*FAST)
    board = await Board.open(browser, server, "dana")
    reached_server: list[str] = []

    async def response_lost(route: Route) -> None:
        # The first request reaches the server (which applies it) but its answer is
        # lost; every later one fails outright: the server is "unreachable".
        if not reached_server:
            reached_server.append(route.request.post_data or "")
            await route.fetch()
        await route.abort()

    await board.page.route("**/sync/v1/mutations", response_lost)
    for record_id, title in (("q1", "Made offline"), ("q2", "Also offline")):
        await board.page.fill("#new-id", record_id)
        await board.page.fill("#new-title", title)
        await board.page.press("#new-title", "Enter")
    for record_id in ("q1", "q2"):
        await expect(board.card(record_id)).to_have_attribute("data-pending", "create")
    await expect(board.page.locator("#outbox")).to_have_attribute("data-count", "2")
    await expect(board.page.locator("#outbox")).to_have_attribute("data-state", "offline")

    # The queue is in IndexedDB: a reload (still offline) shows the cards pending.
    await board.page.reload()
    await board.wait_live()
    await expect(board.card("q2")).to_have_attribute("data-pending", "create")
    await expect(board.page.locator("#outbox")).to_have_attribute("data-storage", "indexeddb")
    queued = await stored_queue(board.page, "crdt-sync.board.outbox:open")
    assert [m["id"] for m in queued] == ["q1", "q2"]
    assert len({m["client_tx_id"] for m in queued}) == 2

    # Back online: the replay is applied once, q1 (already applied) is not applied again.
    await board.page.unroute("**/sync/v1/mutations")
    await board.page.click("#outbox-retry")
    await expect(board.page.locator("#outbox")).to_be_hidden()
    for record_id in ("q1", "q2"):
        await expect(board.in_column("open", record_id)).not_to_have_attribute(
            "data-pending", "create"
        )
    assert "q1" in reached_server[0]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        fields = await records(http)
        assert fields == {
            "q1": {"title": "Made offline", "status": "open"},
            "q2": {"title": "Also offline", "status": "open"},
        }
        inserts = [f["id"] for f in await frames(http) if f["op"] == "i"]
        assert sorted(inserts) == ["q1", "q2"], "each record inserted exactly once"
    await board.close()


async def test_conflicting_offline_move_shows_a_notice(
    browser: Browser, server_factory: Any
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("k", title="Contested", status="open"))
        board = await Board.open(browser, server, "erin")
        await expect(board.in_column("open", "k")).to_be_visible()
        await board.page.route("**/sync/v1/mutations", lambda route: route.abort())
        await board.card("k").locator("select.rec-move").select_option("doing")
        await expect(board.in_column("doing", "k")).to_have_attribute("data-pending", "change")
        # Meanwhile someone else moves it: the page sees that frame, its own move still on top.
        await mutate(http, {"t": "task", "id": "k", "op": "u", "p": {"status": "done"}})
        await board.page.unroute("**/sync/v1/mutations")
        await board.page.click("#outbox-retry")
        notice = board.card("k").locator(".notice.conflict")
        await expect(notice).to_contain_text("status was changed by someone else")
        await expect(board.in_column("doing", "k")).not_to_have_attribute("data-pending", "change")
        assert (await records(http))["k"]["status"] == "doing"
        await notice.locator("button.dismiss").click()
        await expect(notice).to_have_count(0)
        await board.close()


# -- bootstrap: pages and 429 ----------------------------------------------------------------


async def test_bootstrap_pages_and_obeys_retry_after(browser: Browser, server_factory: Any) -> None:
    # One records request per client per 500 ms: the second page is refused with 429.
    server = server_factory("--delta-min-interval-ms", "500", "--frame-coalesce-ms", "50")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await http.post(
            "/sync/v1/mutations",
            json={
                "mutations": [
                    {"t": "bulk", "id": f"{i:03}", "op": "i", "p": {"status": COLUMNS[i % 4]}}
                    for i in range(130)
                ]
            },
        )
    statuses: list[int] = []

    async def before(page: Page) -> None:
        page.on(
            "response",
            lambda r: statuses.append(r.status) if "/sync/v1/records" in r.url else None,
        )

    board = await Board.open(browser, server, "hal", t="bulk", before=before)
    await expect(board.page.locator(".rec")).to_have_count(130)
    for column in COLUMNS:
        await expect(board.page.locator(f'.column[data-column="{column}"] .rec')).to_have_count(
            33 if column in ("open", "doing") else 32
        )
    assert statuses.count(429) >= 1 and statuses.count(200) == 2, statuses
    await board.close()


# -- the frame socket: resume with since, bootstrap after 4410, heartbeat --------------------


def since_of(route: WebSocketRoute) -> int:
    query = parse_qs(urlsplit(route.url).query)
    assert query["t"] == ["task"], route.url
    return int(query["since"][0])


async def test_resumes_with_since_and_bootstraps_again_after_4410(
    browser: Browser, server_factory: Any
) -> None:
    """The page's frame sockets pass through Playwright, which can drop them and hold
    the next one back (the page sees it open, nothing arrives) while frames happen."""
    server = server_factory(*FAST, "--frame-retention", "5")
    routes: list[WebSocketRoute] = []
    upstream: list[WebSocketRoute] = []
    hold = [False]
    bootstraps: list[str] = []

    def route_socket(ws: WebSocketRoute) -> None:
        routes.append(ws)
        if not hold[0]:
            upstream.append(ws.connect_to_server())

    async def before(page: Page) -> None:
        await page.route_web_socket("**/sync/v1/ws*", route_socket)
        page.on(
            "request", lambda r: bootstraps.append(r.url) if "/sync/v1/records" in r.url else None
        )

    async def drop_and_hold() -> WebSocketRoute:
        """Close the page's socket (as a server shutting down would); hold the next one."""
        hold[0] = True
        count = len(routes)
        # The page's side first: the page's socket is Playwright's stand-in, which
        # forwards what the page sends to the real socket; closed first, that one
        # would be handed a ping sent in between ("already in CLOSING or CLOSED
        # state" in the console: seen once in CI).
        await routes[-1].close(code=1001, reason="going away")
        await upstream[-1].close(code=1000)
        with anyio.fail_after(10):
            while len(routes) == count:
                await anyio.sleep(0.05)
        return routes[-1]

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("r1", title="First", status="open"))
        board = await Board.open(browser, server, "fay", before=before)
        await expect(board.in_column("open", "r1")).to_be_visible()
        assert len(bootstraps) == 1

        # Dropped: the page comes back with since = the last sid it applied, and
        # gets what it missed from the feed, without bootstrapping again.
        seen = await board.last_sid()
        held = await drop_and_hold()
        assert since_of(held) == seen
        await mutate(
            http,
            insert("r2", title="Missed", status="doing"),
            {"t": "task", "id": "r1", "op": "u", "p": {"title": "First, renamed"}},
        )
        upstream.append(held.connect_to_server())
        await expect(board.in_column("doing", "r2")).to_be_visible()
        await expect(board.card("r1").locator(".rec-title")).to_have_text("First, renamed")
        assert len(bootstraps) == 1

        # Dropped again, and away until the frames it needs are trimmed: the server
        # answers since_too_old + 4410 and the page bootstraps from /records again.
        seen = await board.last_sid()
        held = await drop_and_hold()
        assert since_of(held) == seen
        await mutate(http, {"t": "task", "id": "r2", "op": "d"}, insert("r3", status="done"))
        await mutate(http, *[insert(f"n{i}", status="open") | {"t": "noise"} for i in range(8)])
        await wait_until(lambda: _too_old(http, seen))
        hold[0] = False
        upstream.append(held.connect_to_server())
        await expect(board.in_column("done", "r3")).to_be_visible()
        await expect(board.card("r2")).to_have_count(0)
        await board.wait_live()
        assert len(bootstraps) == 2
        assert since_of(routes[-1]) >= seen + 10
        await expect(board.in_column("open", "r1")).to_be_visible()
        await board.close()


async def _too_old(http: httpx.AsyncClient, since: int) -> bool:
    response = await http.get("/sync/v1/delta", params={"since": since})
    return response.status_code == 410


async def test_pings_and_replaces_a_silent_socket(browser: Browser, server_factory: Any) -> None:
    """With the page's clock under control: a ping every 15 s, and after 30 s without a
    message the socket is given up and replaced (with since = the last sid applied)."""
    server = server_factory(*FAST)
    routes: list[WebSocketRoute] = []
    from_page: list[str | bytes] = []

    def route_socket(ws: WebSocketRoute) -> None:
        routes.append(ws)
        if len(routes) == 1:  # a socket that opens and then says nothing at all
            ws.on_message(lambda message: from_page.append(message))
        else:
            ws.connect_to_server()

    async def before(page: Page) -> None:
        await page.clock.install()
        await page.route_web_socket("**/sync/v1/ws*", route_socket)

    board = await Board.open(browser, server, "gil", before=before)
    await board.page.clock.run_for(15_500)
    await wait_until(lambda: _true(from_page))
    assert from_page == ['{"type":"ping"}']
    await expect(board.status).to_have_attribute("data-status", "connected")
    await board.page.clock.run_for(15_000)  # 30.5 s without a message
    await expect(board.status).to_have_attribute("data-status", "disconnected")
    await board.page.clock.run_for(1_000)  # the reconnect backoff (at most 0.5 s)
    await board.wait_live()
    assert len(routes) == 2 and since_of(routes[1]) == await board.last_sid()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("h1", title="After the heartbeat", status="open"))
    await expect(board.in_column("open", "h1")).to_be_visible()
    await board.close()


async def _true(value: Any) -> bool:
    return bool(value)


# -- a server restart: Offline, a change queued, Online, the change applied once -------------


class RestartedBoard(Board):
    # While the server stops it answers 503 (shutting down); while it is down Chromium
    # logs the refused connections.
    EXPECTED_CONSOLE = (
        *Board.EXPECTED_CONSOLE,
        "responded with a status of 503",
        "ERR_CONNECTION_REFUSED",
        "WebSocket connection to",
    )


async def test_goes_offline_and_online_across_a_server_restart_applying_the_queue_once(
    browser: Browser, server_factory: Any, tmp_path: Path
) -> None:
    port = free_port()
    db = tmp_path / "restart.db"
    server = server_factory(*FAST, "--port", str(port), db=db)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("r", title="Survives", status="open"))
    board = await RestartedBoard.open(browser, server, "ivy")
    await expect(board.in_column("open", "r")).to_be_visible()
    await expect(board.status).to_have_attribute("data-state", "online")

    server.stop()
    await expect(board.status).to_have_attribute("data-state", "offline")
    await expect(board.status).to_have_attribute("data-status", "disconnected")
    await board.card("r").locator("select.rec-move").select_option("doing")
    await board.page.fill("#new-id", "made-offline")
    await board.page.fill("#new-title", "While the server was down")
    await board.page.press("#new-title", "Enter")
    await expect(board.in_column("doing", "r")).to_have_attribute("data-pending", "change")
    await expect(board.in_column("open", "made-offline")).to_have_attribute(
        "data-pending", "create"
    )
    outbox = board.page.locator("#outbox")
    await expect(outbox).to_have_attribute("data-count", "2")
    await expect(outbox).to_have_attribute("data-state", "offline")
    queued = await stored_queue(board.page, "crdt-sync.board.outbox:open")
    assert [(m["op"], m["id"]) for m in queued] == [("u", "r"), ("i", "made-offline")]

    restarted = server_factory(*FAST, "--port", str(port), db=db)
    assert restarted.url == server.url
    # The backoff has grown while the server was down: its ceiling, not WAIT_MS.
    await expect(board.status).to_have_attribute("data-state", "online", timeout=40_000)
    await board.wait_live()
    await expect(outbox).to_be_hidden()
    await expect(board.in_column("doing", "r")).not_to_have_attribute("data-pending", "change")
    await expect(board.in_column("open", "made-offline")).not_to_have_attribute(
        "data-pending", "create"
    )
    assert await stored_queue(board.page, "crdt-sync.board.outbox:open") == []
    async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as http:
        assert await records(http) == {
            "r": {"title": "Survives", "status": "doing"},
            "made-offline": {"title": "While the server was down", "status": "open"},
        }
        tx_ids = [m["client_tx_id"] for m in queued]
        applied = [f for f in await frames(http) if f["ctx"].get("client_tx_id") in tx_ids]
        assert [f["ctx"]["client_tx_id"] for f in applied] == tx_ids, "each applied once, in order"
    await board.close()


async def test_tabs_share_the_offline_queue(browser: Browser, server_factory: Any) -> None:
    """Two tabs of one browser (one origin, one identity) share the stored queue: a
    change queued in a tab that cannot reach the server shows in the other, which
    sends it; the first tab then sees it applied. Applied once either way."""
    server = server_factory(*FAST)
    board = await Board.open(browser, server, "jo")
    await board.page.route("**/sync/v1/mutations", lambda route: route.abort())
    other = Board(board.context, await board.context.new_page())
    await other.goto(server)
    await board.page.fill("#new-id", "shared")
    await board.page.fill("#new-title", "Queued in one tab")
    await board.page.press("#new-title", "Enter")
    # The other tab sends it (its mutations are not cut off); both end with it applied.
    await expect(other.in_column("open", "shared")).to_be_visible()
    await expect(board.in_column("open", "shared")).not_to_have_attribute("data-pending", "create")
    await expect(board.page.locator("#outbox")).to_be_hidden()
    await expect(other.page.locator("#outbox")).to_be_hidden()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await records(http)) == {"shared": {"title": "Queued in one tab", "status": "open"}}
        applied = [f for f in await frames(http) if f["id"] == "shared"]
        assert [f["op"] for f in applied] == ["i"], applied
        # Made in the first tab (its client_tx_id), sent by the other (its client_id).
        assert applied[0]["ctx"]["client_tx_id"].startswith(await board.client_id())
        assert applied[0]["ctx"]["client_id"] == await other.client_id()
    assert other.errors == []
    await board.close()


async def test_the_sdk_follows_the_feed_over_sse_in_chromium(
    browser: Browser, server_factory: Any
) -> None:
    """The SDK's SSE transport (fetch-stream, Bearer-capable) in a real browser: a
    client made in the board's page with no WebSocket at all."""
    server = server_factory(*FAST)
    board = await Board.open(browser, server, "kim")
    page = board.page
    await page.evaluate(
        """async () => {
            const { createFrameClient } = await import('/web/sdk/index.js')
            const options = { url: location.origin, types: ['sse'], WebSocket: null }
            window.sse = createFrameClient(options)
        }"""
    )
    await page.wait_for_function("() => window.sse.state === 'online'", timeout=WAIT_MS)
    assert await page.evaluate("() => window.sse.transport") == "sse"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        [made] = await mutate(http, {"t": "sse", "id": "s1", "op": "i", "p": {"n": 1}})
        await page.wait_for_function(
            "(sid) => window.sse.lastSid >= sid && window.sse.get('sse', 's1')", arg=made["sid"]
        )
        answer = await page.evaluate("() => window.sse.save('sse', 's1', {n: 2})")
        assert answer["status"] == 200
        await page.wait_for_function(
            "(sid) => window.sse.confirmed('sse', 's1')?.sid === sid", arg=answer["sid"]
        )
        assert (await records(http, "sse")) == {"s1": {"n": 2}}
    await page.evaluate("() => window.sse.close()")
    await board.close()


# -- a phone: 390 px wide, the columns a strip that scrolls sideways ---------------------------


PHONE = (390, 844)


async def overflow(page: Page) -> dict[str, int]:
    """The page's scroll width and the widest right edge of what is outside the strip."""
    return await page.evaluate(
        """() => ({
            scrollWidth: document.documentElement.scrollWidth,
            right: Math.max(...[...document.querySelectorAll('body *')]
                .filter((e) => !e.closest('.board') && e.getClientRects().length)
                .map((e) => e.getBoundingClientRect().right)),
        })"""
    )


async def in_viewport(locator: Any, width: int) -> bool:
    box = await locator.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width


async def test_board_at_390_px_has_no_horizontal_overflow_and_moves_live(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST)
    long_id = "an-id-without-any-space-" + "x" * 60
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(
            http,
            insert("1", title="Write the spec", status="open", owner="ann", points=3),
            insert("2", title="Make the board usable on a phone at 390 px", status="open"),
            insert("3", title="Build the board", status="doing", tags=["web", "ui"]),
            insert("4", title="Ship it", status="done"),
            insert("5", title="Waiting on legal", status="blocked"),
            insert(long_id, title="A" * 80, status="doing", note="y" * 200),
        )
    alice = await Board.open(browser, server, "alice", viewport=PHONE)
    page = alice.page
    bob = await Board.open(browser, server, "bob")
    await expect(alice.in_column("doing", long_id)).to_have_count(1)
    measured = await overflow(page)
    assert measured["scrollWidth"] <= PHONE[0], measured
    assert measured["right"] <= PHONE[0], measured

    # The tabs show the counts; one column is in view at a time, a tab brings another.
    tabs = page.locator("#column-tabs")
    await expect(tabs).to_be_visible()
    await expect(tabs.locator('button[data-column="doing"] .count')).to_have_text("2")
    await expect(tabs.locator('button[data-column="open"]')).to_have_attribute(
        "aria-current", "true"
    )
    assert await in_viewport(alice.in_column("open", "1"), PHONE[0])
    assert not await in_viewport(alice.in_column("done", "4"), PHONE[0])
    await tabs.locator('button[data-column="done"]').click()
    await wait_until(lambda: in_viewport(alice.in_column("done", "4"), PHONE[0]))
    await expect(tabs.locator('button[data-column="done"]')).to_have_attribute(
        "aria-current", "true"
    )
    assert (await overflow(page))["scrollWidth"] <= PHONE[0]

    # Bob (at 1280 px) moves card 4 back to doing: it moves on the phone too.
    await bob.card("4").locator("select.rec-move").select_option("doing")
    await expect(alice.in_column("doing", "4")).to_be_visible()
    await expect(tabs.locator('button[data-column="doing"] .count')).to_have_text("3")
    await expect(tabs.locator('button[data-column="done"] .count')).to_have_text("0")

    # Alice moves card 1 on the phone: Bob sees it move.
    await tabs.locator('button[data-column="open"]').click()
    await alice.card("1").locator("select.rec-move").select_option("done")
    await expect(bob.in_column("done", "1")).to_be_visible()
    await expect(bob.in_column("open", "1")).to_have_count(0)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await wait_until(lambda: _status_is(http, "1", "done"))

    # An opened card (with its presence list) still fits.
    await tabs.locator('button[data-column="open"]').click()
    await alice.card("2").locator(".rec-toggle").click()
    await expect(alice.card("2").locator(".peer.self")).to_contain_text("alice")
    await bob.card("2").locator(".rec-toggle").click()  # Bob looks at it too
    await expect(avatars(alice, "2")).to_have_count(2)
    await expect(avatars(alice, "2").first).to_have_attribute("title", "alice (you), viewing")
    assert (await overflow(page))["scrollWidth"] <= PHONE[0]
    await page.evaluate("() => window.scrollTo(0, 0)")
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(artifacts / "board-390.png"))

    # From the keyboard on the phone: the moved card takes the focus into its new
    # column, which the strip scrolls into view (its tab marked).
    await alice.card("2").locator(".rec-toggle").focus()
    await page.keyboard.press("Shift+ArrowRight")
    await expect(alice.in_column("doing", "2")).to_be_visible()
    await wait_until(lambda: _focus_in(page, "2", "doing"))
    await wait_until(lambda: in_viewport(alice.in_column("doing", "2"), PHONE[0]))
    await expect(tabs.locator('button[data-column="doing"]')).to_have_attribute(
        "aria-current", "true"
    )
    await expect(bob.in_column("doing", "2")).to_be_visible()
    assert (await overflow(page))["scrollWidth"] <= PHONE[0]
    await bob.close()
    await alice.close()


# -- keyboard only -------------------------------------------------------------------------------


async def focused(page: Page) -> dict[str, Any]:
    return await page.evaluate(
        """() => {
            const e = document.activeElement
            const card = e && e.closest ? e.closest('.rec') : null
            const style = getComputedStyle(e)
            return {
                id: e.id || null,
                cls: e.className || null,
                card: card ? card.dataset.id : null,
                column: card ? card.closest('.column').dataset.column : null,
                expanded: e.getAttribute('aria-expanded'),
                outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0,
            }
        }"""
    )


async def tab_to(page: Page, check: Callable[[dict[str, Any]], bool], limit: int = 40) -> list:
    """Press Tab until the focus satisfies ``check`` (at most ``limit`` times); the ids
    of what the focus passed."""
    passed = []
    for _ in range(limit):
        await page.keyboard.press("Tab")
        now = await focused(page)
        passed.append(now["id"] or now["cls"])
        if check(now):
            return passed
    raise AssertionError(f"Tab never reached it; passed {passed}")


async def test_keyboard_only_create_move_and_delete(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("a", title="Alpha", status="open"))
        board = await Board.open(browser, server, "kay")
        page = board.page
        await board.goto(server)  # again: the focus starts at the top of the page

        # Tab goes through the top bar (type, name, token form) to the new-card form.
        passed = await tab_to(page, lambda f: f["id"] == "token-input")
        assert passed.index("type-name") < passed.index("user-name")
        # The token form: a token typed and Enter; Forget (Tab, Enter) clears it.
        await page.keyboard.type("not-a-real-token")
        await page.keyboard.press("Enter")
        await expect(page.locator("#token-state")).to_have_text("Token set")
        await page.keyboard.press("Tab")
        assert (await focused(page))["id"] is None  # the Use button
        await page.keyboard.press("Tab")
        assert (await focused(page))["id"] == "token-clear"
        await page.keyboard.press("Enter")
        await expect(page.locator("#token-state")).to_have_text("No token (open server)")
        assert (await focused(page))["id"] == "token-input"
        await board.wait_live()
        await tab_to(page, lambda f: f["id"] == "new-id")
        await page.keyboard.type("kb")
        await page.keyboard.press("Tab")
        assert (await focused(page))["id"] == "new-title"
        await page.keyboard.type("Made with the keyboard")
        await page.keyboard.press("Enter")
        await expect(board.in_column("open", "kb")).to_be_visible()
        await wait_until(lambda: _status_is(http, "kb", "open"))
        assert (await focused(page))["id"] == "new-title"  # ready for the next card

        # On to the board: one card is in the tab order; the arrows go to the others.
        now = await focused(page)
        now = await tab_to(page, lambda f: f["card"] is not None) and await focused(page)
        assert now["card"] == "a" and "rec-toggle" in now["cls"] and now["outline"], now
        await page.keyboard.press("ArrowDown")
        now = await focused(page)
        assert now["card"] == "kb" and now["outline"], now

        # Enter opens it, Escape closes it, the focus stays on it.
        await page.keyboard.press("Enter")
        await expect(board.card("kb")).to_have_attribute("data-expanded", "true")
        assert (await focused(page))["expanded"] == "true"
        await expect(board.card("kb").locator(".peer.self")).to_contain_text("kay")
        await page.keyboard.press("Escape")
        await expect(board.card("kb")).to_have_attribute("data-expanded", "false")
        assert (await focused(page))["expanded"] == "false"

        # Shift+→ moves it a column on; the focus follows the card; it is announced.
        await page.keyboard.press("Shift+ArrowRight")
        await expect(board.in_column("doing", "kb")).to_be_visible()
        await wait_until(lambda: _focus_in(page, "kb", "doing"))
        await expect(page.locator("#announcer")).to_contain_text("Moved “Made with the keyboard”")
        await wait_until(lambda: _status_is(http, "kb", "doing"))
        await page.keyboard.press("Shift+ArrowRight")
        await expect(board.in_column("done", "kb")).to_be_visible()
        await wait_until(lambda: _focus_in(page, "kb", "done"))
        await page.keyboard.press("Shift+ArrowRight")  # already the last: stays
        await expect(page.locator("#announcer")).to_contain_text("already in the last column")
        await page.keyboard.press("Shift+ArrowLeft")
        await expect(board.in_column("doing", "kb")).to_be_visible()
        await wait_until(lambda: _focus_in(page, "kb", "doing"))
        await wait_until(lambda: _status_is(http, "kb", "doing"))

        await page.screenshot(path=str(artifacts / "board-keyboard.png"))

        # ← goes to the card in the column before; → back.
        await page.keyboard.press("ArrowLeft")
        assert (await focused(page))["card"] == "a"
        await page.keyboard.press("ArrowRight")
        assert (await focused(page))["card"] == "kb"

        # Its actions follow in the tab order: the move menu, the editor link, Delete.
        await page.keyboard.press("Tab")
        assert "rec-move" in (await focused(page))["cls"]
        await page.keyboard.press("Tab")
        assert "rec-open" in (await focused(page))["cls"]
        await page.keyboard.press("Tab")
        now = await focused(page)
        assert "rec-delete" in now["cls"] and now["card"] == "kb", now
        await page.keyboard.press("Enter")
        await expect(board.card("kb")).to_have_count(0)
        await expect(page.locator("#announcer")).to_contain_text("Deleted")
        now = await focused(page)
        assert now["card"] == "a" and "rec-toggle" in now["cls"], now  # not lost to <body>
        await wait_until(lambda: _gone(http, "kb"))
        # And no trap: Tab leaves the board, Shift+Tab comes back.
        await tab_to(page, lambda f: f["card"] is None)
        await page.keyboard.press("Shift+Tab")
        assert (await focused(page))["card"] == "a"
    await board.close()


async def _focus_in(page: Page, record_id: str, column: str) -> bool:
    now = await focused(page)
    return now["card"] == record_id and now["column"] == column and "rec-toggle" in now["cls"]


async def _gone(http: httpx.AsyncClient, record_id: str) -> bool:
    return record_id not in await records(http)


# -- who is viewing each card ---------------------------------------------------------------------


def avatars(board: Board, record_id: str) -> Any:
    return board.card(record_id).locator(".rec-head .viewers .avatar")


async def test_collapsed_cards_show_who_is_viewing_them(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(
            http,
            insert("v1", title="Looked at by Bob", status="open"),
            insert("v2", title="Nobody here", status="doing"),
        )
    alice = await Board.open(browser, server, "Alice Liddell")
    bob = await Board.open(browser, server, "Bob Builder")
    await expect(alice.card("v1")).to_be_visible()
    await wait_until(lambda: _watching(alice, {"v1", "v2"}))

    await bob.card("v1").locator(".rec-toggle").click()
    # On Alice's collapsed card: Bob's initials in his colour, his name on hover.
    bobs = avatars(alice, "v1")
    await expect(bobs).to_have_count(1)
    await expect(bobs).to_have_text("BB")
    await expect(bobs).to_have_attribute("title", "Bob Builder, viewing")
    await expect(alice.card("v1")).to_have_attribute("data-expanded", "false")
    await expect(alice.card("v1").locator(".viewers")).to_have_attribute(
        "aria-label", "Here now: Bob Builder, viewing"
    )
    bob_color = await bob.page.evaluate("() => JSON.parse(localStorage['crdt-sync.user']).color")
    shown = await bobs.evaluate("(e) => getComputedStyle(e).getPropertyValue('--peer-color')")
    assert shown.strip() == bob_color
    await expect(avatars(alice, "v2")).to_have_count(0)
    # On Bob's own (open) card: himself, marked as him.
    await expect(avatars(bob, "v1").and_(bob.page.locator(".self"))).to_have_attribute(
        "title", "Bob Builder (you), viewing"
    )

    # Alice opens it too: both, "you" first.
    await alice.card("v1").locator(".rec-toggle").click()
    await expect(avatars(bob, "v1")).to_have_count(2)
    await expect(avatars(alice, "v1")).to_have_count(2)
    await expect(alice.card("v1").locator(".viewers")).to_have_attribute(
        "aria-label", "Here now: Alice Liddell (you), viewing; Bob Builder, viewing"
    )
    await alice.card("v1").locator(".rec-toggle").click()  # closed again: watched
    await expect(avatars(alice, "v1")).to_have_count(1)

    # Someone in the collaborative editor on v2: a square avatar, "editing".
    with anyio.fail_after(30):
        async with connect(server.ws_url, "task/v2") as editor:
            await editor.synced()
            editor.awareness.set_local_state({"user": {"name": "Py Editor", "color": "#26a69a"}})
            await expect(avatars(alice, "v2")).to_have_count(1)
            await expect(avatars(alice, "v2")).to_have_attribute("data-kind", "editor")
            await expect(avatars(alice, "v2")).to_have_attribute("title", "Py Editor, editing")
            await alice.page.mouse.move(0, 0)
            await alice.page.screenshot(path=str(artifacts / "board-viewers.png"))
    await expect(avatars(alice, "v2")).to_have_count(0)

    # Bob closes the card: gone from Alice's; he opens it and leaves the page: gone too.
    await bob.card("v1").locator(".rec-toggle").click()
    await expect(avatars(alice, "v1")).to_have_count(0)
    await bob.card("v1").locator(".rec-toggle").click()
    await expect(avatars(alice, "v1")).to_have_count(1)
    await bob.close()
    await expect(avatars(alice, "v1")).to_have_count(0)
    await alice.close()


async def _watching(board: Board, ids: set[str]) -> bool:
    return set(await board.page.evaluate("() => window.crdtBoard.watching")) == ids


async def test_watches_only_cards_on_screen_within_the_servers_limit(
    browser: Browser, server_factory: Any
) -> None:
    """A long column on a phone: only the cards on screen are watched, those that scroll
    away are left; a server allowing fewer views than the board asks for closes the feed
    (4461, too_many_views) once, the board asks for fewer and stays live."""
    server = server_factory(*FAST, "--max-views-per-connection", "4")
    ids = [f"c{i:02}" for i in range(30)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, *[insert(i, title=f"Card {i}", status="open") for i in ids])
    sockets: list[str] = []

    async def before(page: Page) -> None:
        page.on("websocket", lambda ws: sockets.append(ws.url))

    alice = await Board.open(browser, server, "alice", viewport=PHONE, before=before)
    page = alice.page
    await expect(page.locator(".rec")).to_have_count(30)
    # More than 4 cards are on screen: the 5th watch is refused (4461); the board asks
    # for as many as the server had taken (4, its limit) and is live again.
    await wait_until(lambda: _budget(alice, 4), timeout=20)
    await alice.wait_live()
    await wait_until(lambda: _watch_count(alice, 4))
    watched = set(await page.evaluate("() => window.crdtBoard.watching"))
    assert watched <= {"c00", "c01", "c02", "c03", "c04", "c05"}, watched

    # Bob looks at a card far down: Alice does not watch it until she scrolls to it.
    bob = await Board.open(browser, server, "bob")
    await bob.card("c25").locator(".rec-toggle").click()
    await alice.card("c25").evaluate("(card) => card.scrollIntoView({block: 'center'})")
    await wait_until(lambda: _watching_includes(alice, "c25"))
    await expect(avatars(alice, "c25")).to_have_count(1)
    watched = set(await page.evaluate("() => window.crdtBoard.watching"))
    assert len(watched) <= 4 and not watched & {"c00", "c01"}, watched
    await alice.wait_live()
    assert len(sockets) == 2, sockets  # the refused one and this one: no reconnect loop
    await bob.close()
    await alice.close()


async def _budget(board: Board, budget: int) -> bool:
    return await board.page.evaluate("() => window.crdtBoard.watchBudget") == budget


async def _watch_count(board: Board, count: int) -> bool:
    return len(await board.page.evaluate("() => window.crdtBoard.watching")) == count


async def _watching_includes(board: Board, record_id: str) -> bool:
    return record_id in await board.page.evaluate("() => window.crdtBoard.watching")
