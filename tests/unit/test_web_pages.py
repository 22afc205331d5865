"""crdt_sync.web_pages: the page redirects and what of web/ is served."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from crdt_sync import web_pages

pytestmark = pytest.mark.anyio


def client_of(folder: Path) -> httpx.AsyncClient:
    app = Starlette(routes=web_pages.routes(folder))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_short_paths_redirect_to_their_page_keeping_the_query(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>editor</p>")
    async with client_of(tmp_path) as client:
        for path, page in (("/", ""), ("/board", "board.html"), ("/inspect", "inspect.html")):
            response = await client.get(path + "?doc=note/a&x=1")
            assert response.status_code == 307, path
            assert response.headers["location"] == f"/web/{page}?doc=note/a&x=1"
            bare = await client.get(path)
            assert bare.headers["location"] == f"/web/{page}"
        page = await client.get("/?doc=note/a", follow_redirects=True)
        assert page.text == "<p>editor</p>"


async def test_node_modules_of_a_checkout_are_not_served(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>editor</p>")
    (tmp_path / "sdk").mkdir()
    (tmp_path / "sdk" / "index.js").write_text("export {}")
    for where in (tmp_path / "node_modules" / "x", tmp_path / "sdk" / "node_modules"):
        where.mkdir(parents=True)
        (where / "a.js").write_text("secret")
    async with client_of(tmp_path) as client:
        sdk = await client.get("/web/sdk/index.js")
        assert sdk.status_code == 200
        assert sdk.headers["content-type"].startswith("text/javascript")
        assert (await client.get("/web/node_modules/x/a.js")).status_code == 404
        assert (await client.get("/web/sdk/node_modules/a.js")).status_code == 404


def test_the_repository_pages_are_found() -> None:
    folder = web_pages.web_dir()
    assert folder is not None and (folder / "board.html").is_file()
