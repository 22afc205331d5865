"""The front door's route table and its place in the app: no route goes around it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Mount, Route, WebSocketRoute

from crdt_sync.app import create_app
from crdt_sync.front_door import FrontDoor, Target, classify
from crdt_sync.settings import Settings, SettingsError, add_arguments, from_sources


def http(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


def ws(path: str) -> dict[str, Any]:
    return {"type": "websocket", "path": path, "headers": []}


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        (ws("/yjs/issue/1"), Target("yjs", "issue/1", "read")),
        (ws("/sync/v1/ws"), Target("feed", None, "read")),
        (ws("/anything"), Target("feed", None, "read")),
        (http("GET", "/docs"), Target("http", None, "read")),
        (http("GET", "/docs/a/b"), Target("http", "a/b", "read")),
        (http("GET", "/docs/a/b/update"), Target("http", "a/b", "read")),
        (http("POST", "/docs/a/b/update"), Target("http", "a/b", "write")),
        (http("DELETE", "/docs/a/update"), Target("http", "a/update", "write")),
        (http("DELETE", "/docs/a"), Target("http", "a", "write")),
        (http("POST", "/sync/v1/mutations"), Target("http", None, "write")),
        (http("GET", "/sync/v1/delta"), Target("http", None, "read")),
        (http("GET", "/sync/v1/records"), Target("http", None, "read")),
        (http("GET", "/sync/v1/presence/t/1"), Target("http", "t/1", "read")),
        (http("GET", "/sync/v1/events"), Target("stream", None, "read")),
        (http("POST", "/admin/revoke"), Target("http", None, "admin")),
        (http("GET", "/metrics"), Target("http", None, "admin")),
        (http("GET", "/healthz"), Target("public", None, "read")),
        (http("GET", "/readyz"), Target("public", None, "read")),
        (http("GET", "/openapi.json"), Target("public", None, "read")),
        (http("GET", "/web/editor.html"), Target("public", None, "read")),
        (http("GET", "/nope"), Target("http", None, "read")),
        (http("POST", "/nope"), Target("http", None, "write")),
    ],
)
def test_every_route_needs_what_its_table_says(scope, target) -> None:
    assert classify(scope) == target


def test_no_app_route_is_public_by_omission(tmp_path) -> None:
    app = create_app(Settings(db=str(tmp_path / "x.db")))
    assert isinstance(app.front_door, FrontDoor)
    public = {"/", "/board", "/inspect", "/healthz", "/readyz", "/openapi.json", "/web"}
    for route in app.app.routes:
        path = route.path.replace("{doc:path}", "d").replace("{doc:name}", "d")
        path = path.replace("{t}", "t").replace("{id:name}", "1")
        if isinstance(route, WebSocketRoute):
            assert classify(ws(path)).kind in ("yjs", "feed"), path
            continue
        if isinstance(route, Mount):
            assert path in public
            continue
        assert isinstance(route, Route)
        for method in route.methods or {"GET"}:
            target = classify(http(method, path))
            assert (target.kind == "public") == (path in public), (method, path)


def parse(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_sources(vars(parser.parse_args(list(argv))), environ or {})


def test_list_and_bool_settings_from_flags_and_env() -> None:
    settings = parse(
        "--auth-secret", "a" * 32, "--auth-secret", "b,c" * 16, "--require-auth",
        "--allowed-origins", "https://a.example, https://b.example",
    )  # fmt: skip
    assert settings.auth_secret == ("a" * 32, "b,c" * 16)  # a flag's secret is not split
    assert settings.require_auth is True and settings.allow_open is False
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    env = {
        "CRDT_SYNC_AUTH_SECRET": "x" * 32 + ", " + "y" * 32,
        "CRDT_SYNC_ALLOW_OPEN": "yes",
        "CRDT_SYNC_REQUIRE_AUTH": "0",
    }
    settings = parse(environ=env)
    assert settings.auth_secret == ("x" * 32, "y" * 32)
    assert settings.allow_open is True and settings.require_auth is False
    assert parse("--no-allow-open", environ=env).allow_open is False
    assert "x" * 32 not in repr(settings)  # secrets stay out of repr (and logs)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRDT_SYNC_ALLOW_OPEN": "maybe"}, "--allow-open"),
        ({"CRDT_SYNC_ALLOWED_ORIGINS": "ftp:/x"}, "--allowed-origins"),
        ({"CRDT_SYNC_RATE_LIMIT_WINDOW": "0"}, "--rate-limit-window"),
        ({"CRDT_SYNC_MAX_DOC_BYTES": "10"}, "--max-doc-bytes"),
    ],
)
def test_bad_auth_settings_name_the_flag(env, message) -> None:
    with pytest.raises(SettingsError, match=message):
        parse(environ=env)
