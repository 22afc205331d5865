"""The static pages (editor, record board, inspector): where they are and their routes.

The pages live in ``web/`` at the top of the repository and ship inside the package
as ``crdt_sync/web`` (see ``pyproject.toml``), so an editable install, a source
checkout and a wheel all serve them. They are files served as they are: no build step
at serve time, no request to any other host.

``/`` (editor), ``/board`` and ``/inspect`` redirect to their page under ``/web/``,
keeping the query string (``/?doc=note/welcome`` opens that doc): the pages use
relative URLs, which resolve only under ``/web/``.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

log = logging.getLogger(__name__)

#: A folder of ``web/`` that is never served.
HIDDEN = "node_modules"
#: Short paths -> their page under ``/web/``.
PAGES = {"/": "", "/board": "board.html", "/inspect": "inspect.html"}


def web_dir() -> Path | None:
    """The folder of the static pages: inside the installed package (a wheel), else
    the repository's ``web/`` (a checkout or an editable install); ``None``: neither."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "web", here.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


def routes(folder: Path | None = None) -> list[BaseRoute]:
    """The page routes (of ``folder``, by default :func:`web_dir`), or none (logged)
    when the pages are not installed."""
    folder = folder or web_dir()
    if folder is None:
        log.warning("the web pages are not installed: /, /board, /inspect and /web/ answer 404")
        return []
    return [
        *(Route(path, _redirect_to(page), methods=["GET", "HEAD"]) for path, page in PAGES.items()),
        Mount("/web", PageFiles(directory=folder, html=True), name="web"),
    ]


class PageFiles(StaticFiles):
    """The files of the pages, but not a checkout's ``node_modules`` (build tools of
    the bundle, not pages; a wheel has none)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        if HIDDEN in PurePosixPath(path).parts:
            raise HTTPException(404)
        return await super().get_response(path, scope)


def _redirect_to(page: str):
    async def redirect(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse(f"/web/{page}" + (f"?{query}" if query else ""))

    return redirect
