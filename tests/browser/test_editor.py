"""The collaborative editor (``web/index.html``) in real browsers against a real server.

Browser contexts (separate storage, no shared BroadcastChannel) edit one doc
through the server: CodeMirror 6 bound to the ``body`` Y.Text by y-codemirror.next,
remote carets drawn in the text, the local copy in IndexedDB. Servers are real
``crdt-sync serve`` processes, stopped and restarted on the same port and database
for the offline tests; a Python client reads what the browsers typed. Every wait
is a bounded Playwright auto-wait or a bounded poll.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import connect
from tests.browser.conftest import PageUnderTest
from tests.cluster import free_port
from tests.integration.auth_support import SECRET, bearer, token
from tests.server_process import ServerProcess

if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="the Python package `playwright` is not installed")
from playwright.async_api import Browser, expect

pytestmark = pytest.mark.anyio

DOC = "notes/browser-test"
WAIT_MS = 10_000
#: A stopped server is noticed at once; a restarted one within the provider's
#: capped backoff (5 s) plus a loaded machine's slack.
RECONNECT_MS = 30_000

#: Reads the doc's local copy straight from IndexedDB (what a reload would load).
READ_LOCAL_COPY = """async (key) => {
    const { Y } = await import('/web/vendor/yjs-bundle.js')
    const db = await new Promise((resolve, reject) => {
        const request = indexedDB.open(key)
        request.onsuccess = () => resolve(request.result)
        request.onerror = () => reject(request.error)
    })
    try {
        const updates = await new Promise((resolve, reject) => {
            const request = db.transaction('updates').objectStore('updates').getAll()
            request.onsuccess = () => resolve(request.result)
            request.onerror = () => reject(request.error)
        })
        const doc = new Y.Doc()
        for (const update of updates) Y.applyUpdate(doc, update)
        return doc.getText('body').toString()
    } finally {
        db.close()
    }
}"""


class Editor(PageUnderTest):
    """One browser context with the editor page open on ``doc``."""

    #: The page logs failed WebSocket handshakes while the server is down.
    EXPECTED_CONSOLE = ("WebSocket connection to",)

    @classmethod
    async def open(
        cls,
        browser: Browser,
        server: ServerProcess,
        name: str,
        *,
        doc: str = DOC,
        path: str = "/web/",
        synced: bool = True,
        viewport: tuple[int, int] = (1100, 620),
        color: str | None = None,
        fragment: str = "",
    ) -> Editor:
        width, height = viewport
        context = await browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT_MS)
        editor = cls(context, await context.new_page())
        editor.watch_hosts(server)
        await editor.page.goto(f"{server.url}{path}?doc={doc}{fragment}")
        await expect(editor.page.locator(".cm-content")).to_be_visible()
        if synced:
            await editor.wait_connected()
        await editor.page.fill("#user-name", name)
        await editor.page.press("#user-name", "Tab")  # commits the name (`change`)
        if color is not None:
            await editor.page.fill("#user-color", color)
        return editor

    def watch_hosts(self, server: ServerProcess) -> None:
        """Collect every request to another host than the server (there must be none:
        no CDN, no web fonts). ``blob:``/``data:`` URLs are this page's own."""
        self.foreign: list[str] = []
        own = urlsplit(server.url).netloc

        def check(request: Any) -> None:
            url = urlsplit(request.url)
            if url.scheme not in ("blob", "data") and url.netloc != own:
                self.foreign.append(request.url)

        self.context.on("request", check)

    @property
    def status(self) -> Any:
        return self.page.locator("#status")

    @property
    def content(self) -> Any:
        return self.page.locator(".cm-content")

    @property
    def presence(self) -> Any:
        return self.page.locator("#presence li")

    @property
    def banner(self) -> Any:
        return self.page.locator("#banner")

    def peer(self, name: str) -> Any:
        return self.page.locator("#presence li", has_text=name)

    def caret_label(self, name: str) -> Any:
        """Another user's caret label, drawn inside the editor's text."""
        return self.page.locator(
            ".cm-content .cm-ySelectionCaret .cm-ySelectionInfo", has_text=name
        )

    async def wait_connected(self, timeout: int = WAIT_MS) -> None:
        await expect(self.status).to_have_attribute("data-status", "connected", timeout=timeout)
        await expect(self.page.locator("#status-text")).to_have_text("Connected")
        await expect(self.status).to_have_attribute("data-synced", "true")

    async def wait_offline(self, timeout: int = WAIT_MS) -> None:
        await expect(self.page.locator("#status-text")).to_have_text("Offline", timeout=timeout)

    async def text(self) -> str:
        """What the editor shows (CodeMirror's document)."""
        return await self.page.evaluate("() => window.crdtSync.view.state.doc.toString()")

    async def wait_text(self, expected: str, timeout: int = WAIT_MS) -> None:
        await self.page.wait_for_function(
            "(expected) => window.crdtSync"
            " && window.crdtSync.view.state.doc.toString() === expected"
            " && window.crdtSync.ytext.toString() === expected",
            arg=expected,
            timeout=timeout,
        )

    async def caret(self) -> int:
        return await self.page.evaluate("() => window.crdtSync.view.state.selection.main.head")

    async def type_at_end(self, text: str) -> None:
        await self.content.click()
        await self.page.keyboard.press("Control+End")
        await self.page.keyboard.type(text)

    async def wait_page_cached(self) -> None:
        """Until the service worker controls the page (its files are cached)."""
        await self.page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        await expect(self.page.locator("#local-state")).to_have_text(
            "Saved in this browser · opens offline"
        )

    async def local_copy(self) -> str:
        key = await self.page.evaluate("() => window.crdtSync.key")
        return await self.page.evaluate(READ_LOCAL_COPY, key)

    async def wait_local_copy(self, expected: str) -> None:
        """Until IndexedDB holds ``expected`` (y-indexeddb writes asynchronously)."""
        with anyio.fail_after(WAIT_MS / 1000):
            while await self.local_copy() != expected:
                await anyio.sleep(0.05)


async def server_text(server: ServerProcess, doc: str = DOC) -> str:
    with anyio.fail_after(10):
        async with connect(server.ws_url, doc) as client:
            await client.synced()
            return str(client.doc.get("body", type=Text))


def restartable(tmp_path: Path) -> ServerProcess:
    """A server on a fixed port and database, so that a restart is the same server."""
    return ServerProcess(tmp_path, "--port", str(free_port()), db=tmp_path / "restart.db")


def restart(stopped: ServerProcess) -> ServerProcess:
    """The same server again: same port, same database."""
    return ServerProcess(stopped.workdir, *stopped.args, db=stopped.db).start()


async def test_two_browsers_edit_together(
    browser: Browser, server: ServerProcess, artifacts: Path
) -> None:
    alice = await Editor.open(browser, server, "alice", color="#e0555b")
    # `/?doc=…` is the editor too (redirected to /web/ with the query kept).
    bob = await Editor.open(browser, server, "bob", path="/", color="#2f8fd8")
    await expect(bob.page).to_have_url(f"{server.url}/web/?doc={DOC}")

    first = "Hello from A. "
    await alice.type_at_end(first)
    await bob.wait_text(first)

    second = "Hi from B."
    await bob.type_at_end(second)
    text = first + second
    await alice.wait_text(text)
    await bob.wait_text(text)

    # Each sees the other's caret, with the name, inside the text; never their own.
    await expect(alice.caret_label("bob")).to_be_visible(timeout=WAIT_MS)
    await expect(bob.caret_label("alice")).to_be_visible(timeout=WAIT_MS)
    await expect(alice.caret_label("alice")).to_have_count(0)
    await expect(bob.caret_label("bob")).to_have_count(0)
    # In each user's colour (the browser writes it back as rgb()).
    await expect(alice.page.locator(".cm-content .cm-ySelectionCaret")).to_have_css(
        "border-left-color", "rgb(47, 143, 216)"
    )
    await expect(bob.page.locator(".cm-content .cm-ySelectionCaret")).to_have_css(
        "border-left-color", "rgb(224, 85, 91)"
    )

    # Presence: everyone in the room, with names and where their caret is. Alice's
    # caret stays before Bob's text, inserted exactly there; Bob's is at the end.
    for editor in (alice, bob):
        await expect(editor.presence).to_have_count(2, timeout=WAIT_MS)
        await expect(editor.page.locator("#presence-count")).to_have_text("2")
    await expect(bob.peer("alice")).to_have_attribute("data-head", str(len(first)))
    await expect(bob.peer("alice")).to_contain_text(f"line 1, col {len(first) + 1}")
    await expect(alice.peer("bob")).to_have_attribute("data-head", str(len(text)))
    await expect(alice.peer("alice")).to_contain_text("you")

    # A new name shows on the caret at once (and in the list), and back again.
    for name in ("Robert", "bob"):
        await bob.page.fill("#user-name", name)
        await bob.page.press("#user-name", "Tab")
        await expect(alice.caret_label(name)).to_be_visible(timeout=WAIT_MS)
        await expect(alice.peer(name)).to_be_visible()
        await expect(alice.page.locator(".cm-ySelectionInfo")).to_have_text([name])

    # A remote insertion before Alice's caret moves it along.
    assert await alice.caret() == len(first)
    prefix = "Note: "
    await bob.content.click()
    await bob.page.keyboard.press("Control+Home")
    await bob.page.keyboard.type(prefix)
    text = prefix + text
    await alice.wait_text(text)
    assert await alice.caret() == len(prefix + first)
    await expect(alice.peer("bob")).to_have_attribute("data-head", str(len(prefix)))

    # Undo is of one's own edits only: Alice's undo takes back her word, not the
    # edit Bob made after it; redo brings her word back.
    # A new undo step, as after a pause in typing: Y.UndoManager merges a user's edits
    # made within 500 ms of each other, and on a fast machine everything since Alice's
    # first words can take less than that.
    await alice.page.evaluate("() => window.crdtSync.undoManager.stopCapturing()")
    await alice.page.keyboard.press("Control+End")
    await alice.page.keyboard.insert_text(" [alice]")
    await bob.wait_text(text + " [alice]")
    await bob.page.keyboard.press("Control+Home")
    await bob.page.keyboard.insert_text("> ")
    text = "> " + text
    await alice.wait_text(text + " [alice]")
    await alice.page.keyboard.press("Control+z")
    await alice.wait_text(text)
    await bob.wait_text(text)
    await alice.page.click("#redo")
    await bob.wait_text(text + " [alice]")
    await alice.page.click("#undo")
    await bob.wait_text(text)

    # A Python client sees the browsers' text and, from the server's greeting,
    # both browsers' awareness states.
    with anyio.fail_after(10):
        async with connect(server.ws_url, DOC) as client:
            await client.synced()
            assert str(client.doc.get("body", type=Text)) == text
            while len(client.remote_states) < 2:
                await anyio.sleep(0.05)
            names = {state["user"]["name"] for state in client.remote_states.values()}
            assert names == {"alice", "bob"}

    await alice.content.click()  # the caret back in Alice's text for the picture
    await expect(bob.caret_label("alice")).to_be_visible()
    await alice.page.screenshot(path=str(artifacts / "editor.png"))
    await bob.page.screenshot(path=str(artifacts / "editor-bob.png"))

    # Bob leaves: Alice's presence list drops to herself alone, his caret goes.
    await bob.context.close()
    await expect(alice.presence).to_have_count(1, timeout=WAIT_MS)
    await expect(alice.peer("alice")).to_be_visible()
    await expect(alice.page.locator("#presence-count")).to_have_text("1")
    await expect(alice.caret_label("bob")).to_have_count(0)

    # Opening another doc from the form, then coming back with the history.
    await alice.page.fill("#doc-name", "notes/other")
    await alice.page.press("#doc-name", "Enter")
    await expect(alice.page).to_have_url(f"{server.url}/web/?doc=notes%2Fother")
    await alice.wait_connected()
    await alice.wait_text("")
    await alice.page.go_back()
    await alice.wait_text(text)
    await expect(alice.page.locator("#doc-name")).to_have_value(DOC)

    assert alice.errors == []
    assert bob.errors == []
    assert alice.foreign == [] and bob.foreign == [], "requests to another host"
    await alice.context.close()


async def test_narrow_screen(browser: Browser, server: ServerProcess, artifacts: Path) -> None:
    """At 390 px the page is one column with no horizontal overflow."""
    phone = await Editor.open(browser, server, "phone", viewport=(390, 844))
    other = await Editor.open(browser, server, "desk")
    await other.type_at_end("Typed on a desk, read on a phone; long lines wrap, nothing overflows.")
    await phone.wait_text(await other.text())
    await expect(phone.caret_label("desk")).to_be_visible(timeout=WAIT_MS)
    overflow = await phone.page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow == 0
    for selector in (".editor-pane", ".sidebar", "#status", "#undo"):
        box = await phone.page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    await phone.page.screenshot(path=str(artifacts / "editor-390.png"), full_page=True)
    assert phone.errors == [] and other.errors == []
    assert phone.foreign == [] and other.foreign == [], "requests to another host"
    await phone.context.close()
    await other.context.close()


async def test_vanished_browser_leaves_no_ghost(browser: Browser, server: ServerProcess) -> None:
    """A tab whose renderer dies says no goodbye: the server must drop its presence."""
    alice = await Editor.open(browser, server, "alice")
    carol = await Editor.open(browser, server, "carol")
    await expect(alice.presence).to_have_count(2, timeout=WAIT_MS)

    # Kill Carol's renderer: no pagehide handler runs, no last message is sent; only
    # the browser process closes the socket. CDP never answers this command.
    cdp = await carol.context.new_cdp_session(carol.page)
    async with anyio.create_task_group() as tg:
        async with carol.page.expect_event("crash", timeout=WAIT_MS):
            tg.start_soon(cdp.send, "Page.crash")
        tg.cancel_scope.cancel()
    await expect(alice.presence).to_have_count(1, timeout=WAIT_MS)
    await expect(alice.peer("carol")).to_have_count(0)

    assert alice.errors == []
    await carol.context.close()
    await alice.context.close()


async def test_deleted_doc_turns_read_only(
    browser: Browser, server: ServerProcess, artifacts: Path
) -> None:
    """DELETE /docs/{doc} while open: read-only with a banner, nothing typed is taken
    silently, the local copy is kept and not pushed back to the server."""
    doc = "notes/doomed"
    alice = await Editor.open(browser, server, "alice", doc=doc)
    await alice.type_at_end("Written before the delete.")
    written = "Written before the delete."
    await alice.wait_local_copy(written)
    assert await server_text(server, doc) == written

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.delete(f"/docs/{doc}")
        assert response.status_code in (200, 204), response.text

        await expect(alice.banner).to_be_visible(timeout=WAIT_MS)
        await expect(alice.banner).to_contain_text("deleted")
        await expect(alice.page.locator("#readonly-tag")).to_be_visible()
        await alice.wait_offline()
        await expect(alice.content).to_have_attribute("contenteditable", "false")
        await expect(alice.content).to_have_attribute("aria-readonly", "true")
        await expect(alice.page.locator("#banner-download")).to_be_visible()
        await alice.page.screenshot(path=str(artifacts / "editor-deleted.png"))

        # Typing is refused on screen (not taken and then dropped).
        await alice.content.click()
        await alice.page.keyboard.type("lost?")
        await alice.page.keyboard.press("Backspace")
        await alice.page.keyboard.press("Control+z")  # nor undone (it is in her stack)
        await expect(alice.page.locator("#undo")).to_be_disabled()
        assert await alice.text() == written
        await alice.wait_local_copy(written)

        # A reload shows the notice again and does not bring the doc back.
        await alice.page.reload()
        await expect(alice.banner).to_contain_text("deleted", timeout=WAIT_MS)
        await alice.wait_text(written)
        await expect(alice.content).to_have_attribute("contenteditable", "false")
        response = await http.get(f"/docs/{doc}")
        assert response.status_code == 404, response.text

        # Starting over: an empty, editable doc of that name, on the server again.
        await alice.page.click("#banner-reset")
        await alice.wait_connected()
        await expect(alice.banner).to_be_hidden()
        await alice.wait_text("")
        await alice.type_at_end("Fresh start.")
        await alice.wait_text("Fresh start.")
    assert await server_text(server, doc) == "Fresh start."
    assert alice.errors == []
    await alice.context.close()


async def test_badge_follows_server_stop_and_restart(
    browser: Browser, tmp_path: Path, artifacts: Path
) -> None:
    """The badge says Offline while the server is down and Connected once it is back;
    what was typed meanwhile (on both sides) is merged, nothing lost."""
    server = restartable(tmp_path).start()
    try:
        alice = await Editor.open(browser, server, "alice")
        bob = await Editor.open(browser, server, "bob")
        await alice.type_at_end("Before. ")
        await bob.wait_text("Before. ")
        await bob.wait_local_copy("Before. ")

        server.stop()
        await alice.wait_offline()
        await bob.wait_offline()
        await expect(alice.status).to_have_attribute("data-status", "offline")
        # Offline-first: still editable, on both sides.
        await alice.type_at_end("Alice offline. ")
        await bob.content.click()
        await bob.page.keyboard.press("Control+Home")
        await bob.page.keyboard.type("Bob offline. ")
        await alice.page.screenshot(path=str(artifacts / "editor-offline.png"))

        server = restart(server)
        await alice.wait_connected(timeout=RECONNECT_MS)
        await bob.wait_connected(timeout=RECONNECT_MS)
        merged = "Bob offline. Before. Alice offline. "
        await alice.wait_text(merged)
        await bob.wait_text(merged)
        assert await server_text(server) == merged
        await alice.page.screenshot(path=str(artifacts / "editor-reconnected.png"))
        assert alice.errors == [] and bob.errors == []
        await alice.context.close()
        await bob.context.close()
    finally:
        server.stop()


async def test_offline_edits_survive_reload_and_reach_others(
    browser: Browser, tmp_path: Path
) -> None:
    """Typed while the server is down, then the page reloaded (still down): the text
    is still there (IndexedDB), and reaches a second browser once the server is back."""
    server = restartable(tmp_path).start()
    try:
        alice = await Editor.open(browser, server, "alice")
        await alice.wait_page_cached()
        await alice.type_at_end("Online. ")
        await alice.wait_local_copy("Online. ")
        assert await server_text(server) == "Online. "

        server.stop()
        await alice.wait_offline()
        await alice.type_at_end("Typed offline.")
        expected = "Online. Typed offline."
        await alice.wait_text(expected)
        await alice.wait_local_copy(expected)

        await alice.page.reload()
        await expect(alice.content).to_be_visible()
        await alice.wait_text(expected)  # from IndexedDB: the server is still down
        await alice.wait_offline()

        server = restart(server)
        await alice.wait_connected(timeout=RECONNECT_MS)
        bob = await Editor.open(browser, server, "bob")
        await bob.wait_text(expected)
        assert await server_text(server) == expected
        assert alice.errors == [] and bob.errors == []
        await alice.context.close()
        await bob.context.close()
    finally:
        server.stop()


async def test_expired_or_forbidden_token_turns_read_only_until_a_new_one(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    """4401 (the token expires while the doc is open) and 4403 (the token does not
    cover the doc): read-only with a banner saying why, no retry; a fresh token from
    the form lets the page in again and keeps what was written."""
    server = server_factory("--auth-secret", SECRET)
    doc = "notes/authed"
    reader = token(sub="witness", docs=("notes/*",), mode="write", ttl=600)

    async def stored() -> str:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            response = await http.get(f"/docs/{doc}", headers=bearer(reader))
        assert response.status_code == 200, response.text
        return response.json()["content"]["body"]

    short = token(sub="alice", docs=("notes/*",), mode="write", ttl=5)
    alice = await Editor.open(browser, server, "alice", doc=doc, fragment=f"#token={short}")
    assert "token=" not in alice.page.url, "the token is taken out of the address"
    await alice.type_at_end("Before expiry.")
    await alice.wait_text("Before expiry.")
    with anyio.fail_after(10):
        while await stored() != "Before expiry.":
            await anyio.sleep(0.1)

    await expect(alice.banner).to_contain_text("expired", timeout=20_000)
    await alice.wait_offline()
    await expect(alice.content).to_have_attribute("contenteditable", "false")
    await expect(alice.page.locator("#token-form")).to_have_attribute("data-needed", "true")
    await alice.page.screenshot(path=str(artifacts / "editor-token-expired.png"))

    fresh = token(sub="alice", docs=("notes/*",), mode="write", ttl=600)
    await alice.page.fill("#token-input", fresh)
    await alice.page.press("#token-input", "Enter")
    await alice.wait_connected()
    await expect(alice.banner).to_be_hidden()
    await expect(alice.content).to_have_attribute("contenteditable", "true")
    await alice.type_at_end(" After.")
    with anyio.fail_after(10):
        while await stored() != "Before expiry. After.":
            await anyio.sleep(0.1)

    elsewhere = token(sub="mallory", docs=("private/*",), mode="write", ttl=600)
    mallory = await Editor.open(
        browser, server, "mallory", doc=doc, fragment=f"#token={elsewhere}", synced=False
    )
    await expect(mallory.banner).to_contain_text("does not allow", timeout=WAIT_MS)
    await mallory.wait_offline()
    await expect(mallory.content).to_have_attribute("contenteditable", "false")
    assert await mallory.text() == ""
    assert alice.errors == [] and mallory.errors == []
    await alice.context.close()
    await mallory.context.close()
