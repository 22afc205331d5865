"""The collaborative editor (``web/index.html``) in two real browsers against a real server.

Two browser contexts (separate storage, no shared BroadcastChannel) edit one doc
through the server; presence comes from awareness; a Python client reads what
the browsers typed. Every wait is a bounded Playwright auto-wait.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Text

from crdt_sync.client import connect
from tests.browser.conftest import PageUnderTest
from tests.server_process import ServerProcess

if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="the Python package `playwright` is not installed")
from playwright.async_api import Browser, expect

pytestmark = pytest.mark.anyio

DOC = "notes/browser-test"
WAIT_MS = 10_000


class Editor(PageUnderTest):
    """One browser context with the editor page open on ``doc``."""

    @classmethod
    async def open(cls, browser: Browser, server: ServerProcess, name: str) -> Editor:
        context = await browser.new_context(viewport={"width": 1100, "height": 620})
        context.set_default_timeout(WAIT_MS)
        editor = cls(context, await context.new_page())
        await editor.page.goto(f"{server.url}/web/?doc={DOC}")
        await expect(editor.status).to_have_attribute("data-synced", "true", timeout=WAIT_MS)
        await expect(editor.status).to_have_attribute("data-status", "connected")
        await editor.page.fill("#user-name", name)
        await editor.page.press("#user-name", "Tab")  # commits the name (`change`)
        return editor

    @property
    def status(self) -> Any:
        return self.page.locator("#status")

    @property
    def textarea(self) -> Any:
        return self.page.locator("#editor")

    @property
    def presence(self) -> Any:
        return self.page.locator("#presence li")

    def peer(self, name: str) -> Any:
        return self.page.locator("#presence li", has_text=name)

    async def caret(self) -> int:
        return await self.textarea.evaluate("el => el.selectionStart")

    async def type_at_end(self, text: str) -> None:
        await self.textarea.click()
        await self.page.keyboard.press("Control+End")
        await self.page.keyboard.type(text)


async def test_two_browsers_edit_together(
    browser: Browser, server: ServerProcess, artifacts: Path
) -> None:
    alice = await Editor.open(browser, server, "alice")
    bob = await Editor.open(browser, server, "bob")

    first = "Hello from A. "
    await alice.type_at_end(first)
    await expect(bob.textarea).to_have_value(first, timeout=WAIT_MS)

    second = "Hi from B."
    await bob.type_at_end(second)
    text = first + second
    await expect(alice.textarea).to_have_value(text, timeout=WAIT_MS)
    await expect(bob.textarea).to_have_value(text, timeout=WAIT_MS)

    # Presence: everyone in the room, with names and where their caret is. Alice's
    # caret stays before Bob's text, inserted exactly there; Bob's is at the end.
    for editor in (alice, bob):
        await expect(editor.presence).to_have_count(2, timeout=WAIT_MS)
        await expect(editor.page.locator("#presence-count")).to_have_text("2")
    await expect(bob.peer("alice")).to_have_attribute("data-head", str(len(first)))
    await expect(bob.peer("alice")).to_contain_text(f"line 1, col {len(first) + 1}")
    await expect(alice.peer("bob")).to_have_attribute("data-head", str(len(text)))
    await expect(alice.peer("alice")).to_contain_text("you")

    # A remote insertion before Alice's caret moves it along; one after it does not.
    assert await alice.caret() == len(first)
    prefix = "Note: "
    await bob.page.keyboard.press("Control+Home")
    await bob.page.keyboard.type(prefix)
    text = prefix + text
    await expect(alice.textarea).to_have_value(text, timeout=WAIT_MS)
    assert await alice.caret() == len(prefix + first)
    await expect(alice.peer("bob")).to_have_attribute("data-head", str(len(prefix)))

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

    await alice.page.screenshot(path=str(artifacts / "editor.png"))

    # Bob leaves: Alice's presence list drops to herself alone.
    await bob.context.close()
    await expect(alice.presence).to_have_count(1, timeout=WAIT_MS)
    await expect(alice.peer("alice")).to_be_visible()
    await expect(alice.page.locator("#presence-count")).to_have_text("1")

    # Opening another doc from the form, then coming back with the history.
    await alice.page.fill("#doc-name", "notes/other")
    await alice.page.press("#doc-name", "Enter")
    await expect(alice.page).to_have_url(f"{server.url}/web/?doc=notes%2Fother")
    await expect(alice.status).to_have_attribute("data-synced", "true", timeout=WAIT_MS)
    await expect(alice.textarea).to_have_value("")
    await alice.page.go_back()
    await expect(alice.textarea).to_have_value(text, timeout=WAIT_MS)
    await expect(alice.page.locator("#doc-name")).to_have_value(DOC)

    assert alice.errors == []
    assert bob.errors == []
    await alice.context.close()


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


async def test_binding_diff_and_caret_transform(browser: Browser, server: ServerProcess) -> None:
    """The textarea binding's pure helpers, run in the browser on the served module."""
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{server.url}/web/textarea-binding.js")
    results = await page.evaluate(
        """async () => {
            const { diff, transformOffset } = await import('/web/textarea-binding.js')
            return {
                insert: diff('hello world', 'hello brave world'),
                remove: diff('hello brave world', 'hello world'),
                replace: diff('abc', 'aXc'),
                repeated: diff('aaa', 'aaaa'),
                emoji: diff('a\\u{1F600}b', 'a\\u{1F601}b'),
                emojiAfter: diff('\\u{1F600}', '\\u{1F600}\\u{1F600}'),
                before: transformOffset(5, [{ insert: 'xy' }]),
                at: transformOffset(5, [{ retain: 5 }, { insert: 'xy' }]),
                after: transformOffset(5, [{ retain: 7 }, { insert: 'xy' }]),
                deletedBefore: transformOffset(5, [{ retain: 1 }, { delete: 2 }]),
                deletedAround: transformOffset(5, [{ retain: 3 }, { delete: 4 }]),
            }
        }"""
    )
    await context.close()
    assert results["insert"] == {"index": 6, "remove": 0, "insert": "brave "}
    assert results["remove"] == {"index": 6, "remove": 6, "insert": ""}
    assert results["replace"] == {"index": 1, "remove": 1, "insert": "X"}
    assert results["repeated"] == {"index": 3, "remove": 0, "insert": "a"}
    # A surrogate pair is replaced whole, never split.
    assert results["emoji"] == {"index": 1, "remove": 2, "insert": "\U0001f601"}
    assert results["emojiAfter"] == {"index": 2, "remove": 0, "insert": "\U0001f600"}
    assert results["before"] == 7
    assert results["at"] == 5
    assert results["after"] == 5
    assert results["deletedBefore"] == 3
    assert results["deletedAround"] == 3
