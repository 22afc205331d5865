"""The inspector (``/inspect``) in Chromium against a real server: it shows a room
another context has open, the frames a mutation logged, and live charts; with auth
on it asks for an admin token and works with one."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Text

from crdt_sync.client import connect
from tests.browser.conftest import open_page
from tests.integration.auth_support import SECRET, token

if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="the Python package `playwright` is not installed")
from playwright.async_api import Browser, expect

pytestmark = pytest.mark.anyio

FAST = ("--delta-min-interval-ms", "0", "--frame-coalesce-ms", "50")
WAIT_MS = 10_000


async def test_the_inspector_shows_a_room_another_context_has_open(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST)
    editor = await open_page(browser, f"{server.url}/?doc=note/inspected")
    inspector = await open_page(browser, f"{server.url}/inspect")
    page = inspector.page
    assert page.url.endswith("/web/inspect.html")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")
    row = page.locator('#rooms tr[data-room="note/inspected"]')
    await expect(row).to_be_visible()
    await expect(row.locator("td").nth(1)).to_have_text("1")  # one connection
    await expect(row.locator("td").nth(2)).not_to_have_text("0")  # the editor's presence

    # A Python editor joins and a mutation is logged: both show up without a reload.
    async with (
        connect(server.ws_url, "note/second") as second,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        await second.synced()
        second.doc["body"] = text = Text()
        text += "hello " * 200
        await second.flush()
        mutation = {"t": "task", "id": "seen-1", "op": "i", "p": {"title": "inspected"}}
        response = await http.post("/sync/v1/mutations", json={"mutations": [mutation]})
        assert response.status_code == 200, response.text
        await expect(page.locator('#rooms tr[data-room="note/second"]')).to_be_visible()
        await expect(page.locator("#frames tbody")).to_contain_text("task/seen-1")
        await expect(page.locator('[data-chart="connections"] .value')).to_have_text("2")
        # The chart has drawn a line of its samples.
        line = page.locator('[data-chart="connections"] .line')
        await expect(line).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+L"))
        await page.screenshot(path=str(artifacts / "inspector.png"), full_page=True)

    # The editor leaves: its room shows no connection (or is unloaded), live.
    await editor.context.close()
    await expect(
        page.locator('#rooms tr[data-room="note/inspected"] td.num').first
    ).not_to_have_text("1")
    assert inspector.errors == []
    await inspector.context.close()


async def test_with_auth_on_it_asks_for_an_admin_token(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST, "--auth-secret", SECRET)
    writer = token(sub="ann", org="orga", mode="write")
    admin = token(sub="root", org="orga", mode="admin")
    inspector = await open_page(browser, f"{server.url}/inspect", width=390)
    inspector.EXPECTED_CONSOLE = ("status of 401", "status of 403")
    page = inspector.page
    await expect(page.locator("#status")).to_have_attribute("data-state", "refused")
    await expect(page.locator("#status-text")).to_have_text("Admin token needed")
    await page.fill("#token-input", writer)
    await page.press("#token-input", "Enter")
    await expect(page.locator("#status-text")).to_have_text("Not an admin token")
    async with connect(server.ws_url, "note/orga-doc", token=writer) as client:
        await client.synced()
        await page.fill("#token-input", admin)
        await page.press("#token-input", "Enter")
        await expect(page.locator("#status")).to_have_attribute("data-state", "live")
        await expect(page.locator('#rooms tr[data-room="note/orga-doc"]')).to_be_visible()
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, width  # no horizontal overflow on a phone
        await page.screenshot(path=str(artifacts / "inspector-390.png"), full_page=True)
    assert inspector.errors == []
    await inspector.context.close()
