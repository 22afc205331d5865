"""Drive the static pages in ``web/`` with a real headless Chromium (Playwright).

The browser is Debian's ``chromium`` (``apt-get install chromium``), never one
downloaded by ``playwright install``. Outside CI a missing browser or a missing
``playwright`` package skips these tests; in CI (``CI`` set) it fails them,
because the CI script installs both and a skip would hide that it did not.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright
except ImportError:  # the dev extra not installed: reported by the fixture below
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
#: How long Chromium may take to start (a bounded wait: two test workers on a loaded
#: 2-core machine have been seen to take over 30 s).
LAUNCH_TIMEOUT_MS = 90_000
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Screenshots for a person to look at; git-ignored.
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it before the browser tests run")
    pytest.skip(reason)


@pytest.fixture
def chromium_path() -> Path:
    """Debian's Chromium, with Playwright to drive it; skips (fails in CI) without them."""
    if async_playwright is None:
        _unavailable("the Python package `playwright` is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(anyio_backend: Any, chromium_path: Path) -> AsyncIterator[Browser]:
    """A headless Chromium, closed after the test."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(chromium_path),
            args=LAUNCH_ARGS,
            headless=True,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class PageUnderTest:
    """A page in its own browser context, collecting its errors: uncaught exceptions
    and console errors, except those whose text contains one of ``EXPECTED_CONSOLE``."""

    EXPECTED_CONSOLE: tuple[str, ...] = ()

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", self._on_console)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(t in message.text for t in self.EXPECTED_CONSOLE):
            self.errors.append(f"console error: {message.text}")


async def open_page(
    browser: Browser,
    url: str,
    *,
    kind: type[PageUnderTest] = PageUnderTest,
    width: int = 1280,
    height: int = 900,
    wait_ms: int = 10_000,
) -> Any:
    """``url`` in a new context of its own (``kind`` collects what the page does)."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(wait_ms)
    page = kind(context, await context.new_page())
    await page.page.goto(url)
    return page
