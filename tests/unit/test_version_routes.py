"""The front door checks the grant for the doc the version routes serve: for every
path and method, the doc ``classify`` names is the doc the matching route reads."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Match, Route

from crdt_sync.app import create_app
from crdt_sync.front_door import Target, classify
from crdt_sync.settings import Settings


def http(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [], "root_path": ""}


@pytest.mark.parametrize(
    ("method", "path", "target"),
    [
        ("GET", "/docs/a/b/versions", Target("http", "a/b", "read")),
        ("POST", "/docs/a/b/versions", Target("http", "a/b", "write")),
        ("GET", "/docs/a/b/versions/7", Target("http", "a/b", "read")),
        ("HEAD", "/docs/a/b/versions/7", Target("http", "a/b", "read")),
        ("POST", "/docs/a/b/versions/7/restore", Target("http", "a/b", "write")),
        # not version routes: the doc is the whole rest, as for /docs/{doc}
        ("DELETE", "/docs/a/versions", Target("http", "a/versions", "write")),
        ("DELETE", "/docs/a/versions/7", Target("http", "a/versions/7", "write")),
        ("GET", "/docs/a/versions/7/restore", Target("http", "a/versions/7/restore", "read")),
        ("POST", "/docs/a/versions/update", Target("http", "a/versions", "write")),
    ],
)
def test_version_routes_are_classified_by_their_doc(method: str, path: str, target) -> None:
    assert classify(http(method, path)) == target


PATHS = [
    "/docs/a/versions",
    "/docs/a/b/versions",
    "/docs/a/versions/versions",
    "/docs/a/versions/7",
    "/docs/a/versions/7/restore",
    "/docs/a/versions/7/restore/versions",
    "/docs/a/versions/update",
    "/docs/a/update/versions",
    "/docs/versions/versions/versions/1",
    "/docs//versions",
    "/docs/a/versions/",
    "/docs/a/versions/x/restore",
]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE"])
@pytest.mark.parametrize("path", PATHS)
def test_the_front_door_names_the_doc_the_route_serves(tmp_path, method: str, path: str) -> None:
    app = create_app(Settings(db=str(tmp_path / "x.db"))).app
    scope = http(method, path)
    served = None
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        match, child = route.matches(scope)
        if match is Match.FULL:
            served = child["path_params"].get("doc")
            break
    target = classify(scope)
    if served is not None:
        assert target.doc == served, (method, path, route.path)
