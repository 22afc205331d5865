"""A Chromium page that follows the frame feed by HTTP long-poll alone: the board with
``?transport=longpoll`` on a network where WebSockets and event streams are blocked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_board import FAST, Board, insert, mutate, records, wait_until
from tests.server_process import ServerProcess

pytest.importorskip("playwright", reason="the Python package `playwright` is not installed")
from playwright.async_api import Browser, Page, Route, WebSocketRoute, expect

pytestmark = pytest.mark.anyio


async def has(http: httpx.AsyncClient, record_id: str) -> bool:
    return record_id in await records(http)


async def reached(board: Board, sid: int) -> bool:
    return await board.last_sid() >= sid


class LongPollBoard(Board):
    # The blocked transports, as Chromium logs them.
    EXPECTED_CONSOLE = (*Board.EXPECTED_CONSOLE, "ERR_BLOCKED_BY_CLIENT")

    async def goto(self, server: ServerProcess, t: str = "task") -> None:
        await self.page.goto(f"{server.url}/web/board.html?t={t}&transport=longpoll")
        await self.wait_live()


async def test_the_board_follows_the_feed_by_long_poll_alone(
    browser: Browser, server_factory: Any, artifacts: Path
) -> None:
    server = server_factory(*FAST)
    polls: list[str] = []
    blocked: list[str] = []

    async def refuse_socket(ws: WebSocketRoute) -> None:
        blocked.append(ws.url)
        await ws.close(code=1008, reason="blocked by the network")

    async def refuse_stream(route: Route) -> None:
        blocked.append(route.request.url)
        await route.abort("blockedbyclient")

    async def before(page: Page) -> None:
        await page.route_web_socket("**/*", refuse_socket)
        await page.route("**/sync/v1/events*", refuse_stream)
        page.on(
            "request",
            lambda r: (
                polls.append(r.url) if "/sync/v1/delta" in r.url and "live=1" in r.url else None
            ),
        )

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await mutate(http, insert("r1", title="Before the page", status="open"))
        board = await LongPollBoard.open(browser, server, "lee", before=before)
        await expect(board.in_column("open", "r1")).to_contain_text("Before the page")
        assert await board.page.evaluate("() => window.crdtBoard.client.transport") == "longpoll"
        # Another writer's batch of three shows while the page waits in a long-poll.
        await mutate(
            http,
            insert("r2", title="Second", status="open"),
            insert("r3", title="Third", status="doing"),
            insert("r4", title="Fourth", status="done"),
        )
        await expect(board.in_column("open", "r2")).to_contain_text("Second")
        await expect(board.in_column("doing", "r3")).to_contain_text("Third")
        await expect(board.in_column("done", "r4")).to_contain_text("Fourth")
        # A card created on the page goes out as a mutation and comes back on the poll.
        await board.page.fill("#new-id", "r5")
        await board.page.fill("#new-title", "From the page")
        await board.page.press("#new-title", "Enter")
        await expect(board.in_column("open", "r5")).to_contain_text("From the page")
        await wait_until(lambda: has(http, "r5"))
        assert (await records(http))["r5"] == {"title": "From the page", "status": "open"}
        # Its own frame (sid 5) came back to the page on the poll.
        await wait_until(lambda: reached(board, 5))
        await board.page.screenshot(path=str(artifacts / "board-long-poll.png"))
        assert polls, "the page must have followed the feed by long-poll"
        assert not [u for u in blocked if "/sync/v1/" in u], f"it used another transport: {blocked}"
        await board.close()
