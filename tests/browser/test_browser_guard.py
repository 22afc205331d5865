"""Browsers and the front door: the pages pass their token on every connection, and
a page of another origin cannot open the WebSockets or write once the guard is on.

The token tests run against a real ``crdt-sync serve`` (open: it ignores the token,
we only watch what the pages send). The cross-site tests put
:class:`crdt_sync.browser_guard.BrowserGuard` in front of the real app
(``tests.guarded_server``) and load an attacker page from a tiny ``http.server``
on another port: as ``http://127.0.0.1:OTHER`` (refused by a configured allow-list)
and as ``http://evil.test:OTHER`` (Chromium's resolver maps ``*.test`` to
127.0.0.1; refused by the default list). Every wait is bounded.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import LAUNCH_ARGS, LAUNCH_TIMEOUT_MS, PageUnderTest, open_page
from tests.guarded_server import guarded_server
from tests.server_process import ServerProcess

if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="the Python package `playwright` is not installed")
from playwright.async_api import Browser, Request, Route, WebSocket, async_playwright, expect

pytestmark = pytest.mark.anyio

WAIT_MS = 10_000
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2ln"
OTHER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.b3RoZXI"


class Watched(PageUnderTest):
    """A page with every WebSocket URL and HTTP request (with all headers) it makes."""

    EXPECTED_CONSOLE = ("net::ERR_FAILED",)

    def __init__(self, context, page) -> None:  # type: ignore[no-untyped-def]
        super().__init__(context, page)
        self.sockets: list[str] = []
        self.requests: list[Request] = []
        page.on("websocket", self._on_ws)
        page.on("request", self._on_request)

    def _on_request(self, request: Request) -> None:
        self.requests.append(request)

    def _on_ws(self, ws: WebSocket) -> None:
        self.sockets.append(ws.url)

    async def api_requests(self, prefix: str) -> list[tuple[str, str, dict[str, str]]]:
        found = []
        for request in self.requests:
            path = request.url.split("//", 1)[1].split("/", 1)[1]
            if ("/" + path).startswith(prefix):
                found.append((request.method, request.url, await request.all_headers()))
        return found


async def open_watched(browser: Browser, url: str) -> Watched:
    return await open_page(browser, url, kind=Watched, width=1100, height=620, wait_ms=WAIT_MS)


async def test_editor_sends_the_fragment_token_on_its_websocket(
    browser: Browser, server: ServerProcess, artifacts: Path
) -> None:
    editor = await open_watched(browser, f"{server.url}/web/?doc=notes/token#token={TOKEN}")
    page = editor.page
    await expect(page.locator("#status")).to_have_attribute("data-synced", "true")
    assert any(url.endswith(f"/yjs/notes/token?token={TOKEN}") for url in editor.sockets)
    # Out of the address bar at once, kept for this tab only.
    assert TOKEN not in page.url
    assert await page.evaluate("sessionStorage.getItem('crdt-sync.token')") == TOKEN
    await expect(page.locator("#token-state")).to_contain_text("Token set, expires")
    await expect(page.locator("#token-clear")).to_be_visible()
    await page.screenshot(path=str(artifacts / "editor-token.png"))

    # A token typed into the form: the same doc reconnects with it.
    await page.fill("#token-input", OTHER)
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#status")).to_have_attribute("data-synced", "true")
    await page.wait_for_function(
        "t => window.crdtSync.provider.wsconnected && window.crdtSync.provider.url.endsWith(t)",
        arg=f"token={OTHER}",
    )
    assert editor.sockets[-1].endswith(f"?token={OTHER}")
    # Forgotten: back to no token at all.
    await page.click("#token-clear")
    await expect(page.locator("#token-state")).to_have_text("No token (open server)")
    await page.wait_for_function("() => !window.crdtSync.provider.url.includes('token=')")
    assert editor.errors == []
    await editor.context.close()


async def test_editor_without_token_connects_as_before(
    browser: Browser, server: ServerProcess
) -> None:
    editor = await open_watched(browser, f"{server.url}/web/?doc=notes/open")
    await expect(editor.page.locator("#status")).to_have_attribute("data-synced", "true")
    assert editor.sockets and all("token" not in url for url in editor.sockets)
    await expect(editor.page.locator("#token-state")).to_have_text("No token (open server)")
    await editor.context.close()


async def test_board_sends_the_token_on_fetch_and_its_websocket(
    browser: Browser, server_factory
) -> None:
    server = server_factory("--delta-min-interval-ms", "0")
    board = await open_watched(browser, f"{server.url}/web/board.html#token={TOKEN}")
    page = board.page
    await expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    await page.fill("#new-title", "with a token")
    await page.click("#create-form button[type=submit]")
    await expect(page.locator("article.rec")).to_have_count(1)
    await expect(page.locator("#outbox")).to_be_hidden()

    reads = await board.api_requests("/sync/v1/records")
    writes = await board.api_requests("/sync/v1/mutations")
    assert reads and writes
    for method, url, headers in reads + writes:
        assert headers.get("authorization") == f"Bearer {TOKEN}", (method, url)
        assert "token=" not in url  # HTTP: the header, not the URL
    assert any("/sync/v1/ws?" in url and f"token={TOKEN}" in url for url in board.sockets)
    assert TOKEN not in page.url
    assert board.errors == []
    await board.context.close()


async def test_board_never_sends_changes_queued_under_one_token_with_another(
    browser: Browser, server_factory
) -> None:
    """The outbox belongs to the identity it was queued under (org/sub of the token): a
    new token (another user, another tenant) starts from its own, empty queue."""
    server = server_factory("--delta-min-interval-ms", "0")
    board = await open_watched(browser, f"{server.url}/web/board.html#token={TOKEN}")
    page = board.page
    await expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    # Alice's writes never get through (her retries go on behind the scenes, and one
    # could otherwise land, rightly, with her own token just before the switch); any
    # other token's writes go to the server.
    sent_as_other: list[str] = []

    async def alice_unreachable(route: Route) -> None:
        authorization = await route.request.header_value("authorization")
        if authorization == f"Bearer {TOKEN}":
            await route.abort()
            return
        sent_as_other.append(route.request.post_data or "")
        await route.continue_()

    await page.route("**/sync/v1/mutations", alice_unreachable)
    await page.fill("#new-title", "queued by alice")
    await page.click("#create-form button[type=submit]")
    await expect(page.locator("#outbox")).to_have_attribute("data-count", "1")
    await page.fill("#token-input", OTHER)
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    await expect(page.locator("#outbox")).to_be_hidden()
    # The SDK's offline queue: one IndexedDB database per identity.
    queued = await page.evaluate(
        """(names) => Promise.all(names.map((name) => new Promise((resolve, reject) => {
            const open = indexedDB.open(name)
            open.onupgradeneeded = () => open.result.createObjectStore('mutations')
            open.onerror = () => reject(open.error)
            open.onsuccess = () => {
                const get = open.result.transaction('mutations').objectStore('mutations').getAll()
                get.onsuccess = () => { open.result.close(); resolve(get.result) }
            }
        })))""",
        ["crdt-sync.board.outbox:default/alice", "crdt-sync.board.outbox:default/bob"],
    )
    assert [m["p"]["title"] for m in queued[0]] == ["queued by alice"]
    assert queued[1] == []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        records = (await http.get("/sync/v1/records")).json()["records"]
    assert records == [], "alice's change was not sent with bob's token"
    assert not any("queued by alice" in body for body in sent_as_other)
    await board.context.close()


# -- cross-site pages against the guard -------------------------------------------------

ATTACK = """<!doctype html><meta charset="utf-8"><title>not the board</title>
<script>
const target = new URL(location.hash.slice(1));
const ws = target.href.replace('http', 'ws');
window.results = {};
function trySocket(name, path) {
  const socket = new WebSocket(ws + path);
  socket.onopen = () => { results[name] = 'open'; socket.close(); };
  socket.onclose = (e) => { if (!(name in results)) results[name] = 'refused ' + e.code; };
}
trySocket('yjs', 'yjs/notes/victim');
trySocket('frames', 'sync/v1/ws');
const body = JSON.stringify({mutations: [{t: 'task', id: 'csrf', op: 'i', p: {title: 'x'}}]});
// A "simple" request: no preflight, the browser sends it and hides the answer.
fetch(target + 'sync/v1/mutations', {method: 'POST', mode: 'no-cors',
  headers: {'Content-Type': 'text/plain'}, body})
  .then(() => { results.simple = 'sent'; }, (e) => { results.simple = 'failed ' + e; });
// A JSON request: preflighted; refused there.
fetch(target + 'sync/v1/mutations', {method: 'POST',
  headers: {'Content-Type': 'application/json'}, body})
  .then((r) => { results.json = 'status ' + r.status; }, () => { results.json = 'blocked'; });
</script>"""


@pytest.fixture
def attacker_site(tmp_path: Path) -> Iterator[int]:
    """A tiny static site on another 127.0.0.1 port serving the attack page."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "attack.html").write_text(ATTACK)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
async def resolving_browser(chromium_path: Path) -> AsyncIterator[Browser]:
    """Chromium whose resolver sends ``evil.test`` and ``rebind.test`` to 127.0.0.1."""
    rules = "--host-resolver-rules=MAP evil.test 127.0.0.1, MAP rebind.test 127.0.0.1"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(chromium_path),
            args=[*LAUNCH_ARGS, rules],
            headless=True,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def run_attack(browser: Browser, page_url: str) -> dict[str, str]:
    attack = await open_watched(browser, page_url)
    await attack.page.wait_for_function(
        "() => ['yjs', 'frames', 'simple', 'json'].every((k) => k in window.results)"
    )
    results = await attack.page.evaluate("window.results")
    await attack.context.close()
    return results


async def assert_nothing_written(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/sync/v1/records", params={"t": "task"})
    assert response.status_code == 200
    assert response.json()["records"] == []


async def test_page_on_another_loopback_port_is_refused_by_a_configured_list(
    browser: Browser, tmp_path: Path, attacker_site: int
) -> None:
    async with guarded_server(tmp_path, ["http://127.0.0.1:1"]) as served:
        page = f"http://127.0.0.1:{attacker_site}/attack.html#{served.url}/"
        results = await run_attack(browser, page)
        assert results["yjs"].startswith("refused") and results["frames"].startswith("refused")
        assert results["json"] == "blocked"
        await assert_nothing_written(served.url)

        # The server's own pages still work through the guard.
        board = await open_watched(browser, f"{served.url}/web/board.html")
        await expect(board.page.locator("#status")).to_have_attribute("data-status", "connected")
        await board.page.fill("#new-title", "same origin")
        await board.page.click("#create-form button[type=submit]")
        await expect(board.page.locator("#outbox")).to_be_hidden()
        assert board.errors == []
        await board.context.close()


async def test_cross_site_page_is_refused_by_the_default_list(
    resolving_browser: Browser, tmp_path: Path, attacker_site: int
) -> None:
    async with guarded_server(tmp_path) as served:
        page = f"http://evil.test:{attacker_site}/attack.html#{served.url}/"
        results = await run_attack(resolving_browser, page)
        assert results["yjs"].startswith("refused") and results["frames"].startswith("refused")
        assert results["json"] == "blocked"
        await assert_nothing_written(served.url)

        # DNS rebinding: a name that resolves to 127.0.0.1 gets 421, not the app.
        context = await resolving_browser.new_context()
        page_ = await context.new_page()
        response = await page_.goto(f"http://rebind.test:{served.port}/web/index.html")
        assert response is not None and response.status == 421
        await context.close()
