"""BrowserGuard driven directly with ASGI scopes around a tiny inner app."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from crdt_sync.browser_guard import (
    ORIGIN_REFUSED_CLOSE,
    BrowserGuard,
    InvalidOrigin,
    normalize_origin,
    parse_allowed_origins,
)

pytestmark = pytest.mark.anyio

PORT = 1234


class Inner:
    """The app behind the guard: records what reached it and answers 200 / accepts."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.sends: list[Any] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls.append(scope)
        self.sends.append(send)
        if scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"vary", b"Accept-Encoding")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await receive()
            await send({"type": "websocket.accept"})


def scope(
    kind: str = "http",
    method: str = "GET",
    path: str = "/sync/v1/records",
    *,
    host: str | None = f"127.0.0.1:{PORT}",
    origin: str | None = None,
    content_type: str | None = None,
    extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    http_response: bool = True,
) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    headers += list(extra)
    s: dict[str, Any] = {
        "type": kind,
        "path": path,
        "root_path": "",
        "query_string": b"token=eyJsecret",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
    }
    if kind == "http":
        s["method"] = method
    elif http_response:
        s["extensions"] = {"websocket.http.response": {}}
    return s


async def run(guard: BrowserGuard, s: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    events = [{"type": "websocket.connect"}] if s["type"] == "websocket" else []
    events.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        assert events, "the app read past the events of this test"
        return events.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await guard(s, receive, send)
    return sent


def status_of(sent: list[dict[str, Any]]) -> int:
    return sent[0]["status"]


def headers_of(sent: list[dict[str, Any]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in sent[0]["headers"]}


def body_of(sent: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def loopback_guard(inner: Inner, origins: list[str] | None = None) -> BrowserGuard:
    return BrowserGuard(inner, origins or [], "127.0.0.1", PORT)


# -- WebSocket Origin allow-list -------------------------------------------------------


async def test_ws_from_foreign_origin_is_refused_with_403_before_accept(caplog) -> None:
    inner = Inner()
    caplog.set_level(logging.INFO, "crdt_sync.browser_guard")
    s = scope("websocket", path="/yjs/notes/a", origin="https://evil.example")
    sent = await run(loopback_guard(inner), s)
    assert inner.calls == []
    assert sent[0]["type"] == "websocket.http.response.start"
    assert status_of(sent) == 403
    assert body_of(sent)["error"] == "origin_not_allowed"
    [line] = [r.getMessage() for r in caplog.records]
    assert "'https://evil.example'" in line and "127.0.0.1:50000" in line
    assert "/yjs/notes/a" in line and "eyJsecret" not in line


async def test_ws_refusal_without_http_response_extension_closes_4403() -> None:
    inner = Inner()
    s = scope("websocket", path="/sync/v1/ws", origin="https://evil.example", http_response=False)
    sent = await run(loopback_guard(inner), s)
    assert inner.calls == []
    assert sent == [
        {"type": "websocket.close", "code": ORIGIN_REFUSED_CLOSE, "reason": sent[0]["reason"]}
    ]


async def test_ws_without_origin_passes_with_the_servers_own_send() -> None:
    inner = Inner()
    sent = await run(loopback_guard(inner), scope("websocket", path="/yjs/x"))
    assert len(inner.calls) == 1
    assert sent == [{"type": "websocket.accept"}]
    # Not wrapped: the endpoints write to uvicorn's socket directly through it.
    assert inner.sends[0].__name__ == "send"


@pytest.mark.parametrize(
    "origin",
    [
        f"http://127.0.0.1:{PORT}",
        f"http://localhost:{PORT}",
        "http://localhost:5173",
        "http://127.0.0.1:9",
        "http://[::1]:8080",
        "http://app.localhost:3000",
    ],
)
async def test_ws_from_loopback_origins_passes_while_bound_to_loopback(origin: str) -> None:
    inner = Inner()
    await run(loopback_guard(inner), scope("websocket", path="/yjs/x", origin=origin))
    assert len(inner.calls) == 1


async def test_configured_list_replaces_the_loopback_wildcard_but_keeps_own_origin() -> None:
    inner = Inner()
    guard = loopback_guard(inner, ["https://app.example.com"])
    for origin in ("https://app.example.com", f"http://127.0.0.1:{PORT}"):
        await run(guard, scope("websocket", path="/yjs/x", origin=origin))
    assert len(inner.calls) == 2
    sent = await run(guard, scope("websocket", path="/yjs/x", origin="http://127.0.0.1:5555"))
    assert status_of(sent) == 403 and len(inner.calls) == 2


async def test_star_allows_every_origin_null_included() -> None:
    inner = Inner()
    guard = loopback_guard(inner, ["*"])
    for origin in ("https://evil.example", "null"):
        await run(guard, scope("websocket", path="/yjs/x", origin=origin))
    assert len(inner.calls) == 2


async def test_null_origin_is_refused_by_default() -> None:
    sent = await run(loopback_guard(Inner()), scope("websocket", path="/yjs/x", origin="null"))
    assert status_of(sent) == 403


async def test_own_origin_by_host_when_bound_to_all_interfaces() -> None:
    inner = Inner()
    guard = BrowserGuard(inner, [], "0.0.0.0", PORT)
    s = scope(
        "websocket", path="/yjs/x", host="collab.example.com", origin="https://collab.example.com"
    )
    await run(guard, s)
    assert len(inner.calls) == 1
    # Not bound to loopback: other localhost ports are not the server's own origin.
    s = scope("websocket", path="/yjs/x", host="collab.example.com", origin="http://localhost:5555")
    assert status_of(await run(guard, s)) == 403
    s = scope(
        "websocket",
        path="/yjs/x",
        host="collab.example.com:8443",
        origin="https://collab.example.com",
    )
    assert status_of(await run(guard, s)) == 403


# -- Host check (DNS rebinding) -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_rebound_host_is_refused_with_421_while_bound_to_loopback(kind: str) -> None:
    inner = Inner()
    # A rebinding page is same-origin with itself: its Origin matches its Host.
    s = scope(kind, host=f"rebind.example:{PORT}", origin=f"http://rebind.example:{PORT}")
    sent = await run(loopback_guard(inner), s)
    assert inner.calls == []
    assert status_of(sent) == 421
    assert body_of(sent)["error"] == "host_not_allowed"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", f"127.0.0.1:{PORT}", "localhost:9000", "[::1]:1", None]
)
async def test_loopback_hosts_and_no_host_pass(host: str | None) -> None:
    inner = Inner()
    await run(loopback_guard(inner), scope(host=host))
    assert len(inner.calls) == 1


async def test_any_host_passes_when_not_bound_to_loopback() -> None:
    inner = Inner()
    await run(BrowserGuard(inner, [], "0.0.0.0", PORT), scope(host="anything.example"))
    assert len(inner.calls) == 1


async def test_several_host_headers_are_refused() -> None:
    s = scope(extra=[(b"host", b"evil.example")])
    assert status_of(await run(loopback_guard(Inner()), s)) == 421


# -- CORS and state-changing requests ------------------------------------------------------


async def test_cross_site_text_plain_post_is_refused_with_403() -> None:
    inner = Inner()
    s = scope(
        method="POST",
        path="/sync/v1/mutations",
        origin="https://evil.example",
        content_type="text/plain",
    )
    sent = await run(loopback_guard(inner), s)
    assert inner.calls == []
    assert status_of(sent) == 403
    assert body_of(sent) == {"error": "origin_not_allowed", "detail": body_of(sent)["detail"]}
    assert headers_of(sent)["content-type"] == "application/json"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_every_unsafe_method_from_a_foreign_origin_is_refused(method: str) -> None:
    inner = Inner()
    s = scope(method=method, path="/docs/a/update", origin="https://evil.example")
    assert status_of(await run(loopback_guard(inner), s)) == 403
    assert inner.calls == []


async def test_foreign_get_passes_without_cors_headers() -> None:
    inner = Inner()
    sent = await run(loopback_guard(inner), scope(origin="https://evil.example"))
    assert len(inner.calls) == 1
    headers = headers_of(sent)
    assert "access-control-allow-origin" not in headers
    assert headers["vary"] == "Accept-Encoding, Origin"


async def test_allowed_origin_gets_its_origin_echoed() -> None:
    sent = await run(loopback_guard(Inner()), scope(origin="http://localhost:5173"))
    headers = headers_of(sent)
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "Origin" in headers["vary"]
    assert "Retry-After" in headers["access-control-expose-headers"]


async def test_preflight_from_allowed_origin_is_answered_here() -> None:
    inner = Inner()
    s = scope(
        method="OPTIONS",
        path="/sync/v1/mutations",
        origin="http://localhost:5173",
        extra=[
            (b"access-control-request-method", b"POST"),
            (b"access-control-request-headers", b"authorization, content-type"),
        ],
    )
    sent = await run(loopback_guard(inner), s)
    assert inner.calls == []
    assert status_of(sent) == 204
    headers = headers_of(sent)
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "POST" in headers["access-control-allow-methods"]
    allowed = headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert int(headers["access-control-max-age"]) > 0
    assert headers["vary"] == "Origin"


async def test_preflight_from_foreign_origin_is_refused() -> None:
    s = scope(
        method="OPTIONS",
        path="/sync/v1/mutations",
        origin="https://evil.example",
        extra=[(b"access-control-request-method", b"POST")],
    )
    sent = await run(loopback_guard(Inner()), s)
    assert status_of(sent) == 403
    assert "access-control-allow-origin" not in headers_of(sent)


# -- JSON bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
)
@pytest.mark.parametrize("path", ["/sync/v1/mutations", "/admin/revoke"])
async def test_json_endpoint_without_json_content_type_gets_415(
    content_type: str | None, path: str
) -> None:
    inner = Inner()
    sent = await run(
        loopback_guard(inner), scope(method="POST", path=path, content_type=content_type)
    )
    assert inner.calls == []
    assert status_of(sent) == 415
    assert body_of(sent)["error"] == "unsupported_media_type"


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
async def test_json_endpoint_with_json_passes(content_type: str) -> None:
    inner = Inner()
    s = scope(method="POST", path="/sync/v1/mutations", content_type=content_type)
    await run(loopback_guard(inner), s)
    assert len(inner.calls) == 1


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
async def test_binary_doc_update_takes_any_content_type(content_type: str | None) -> None:
    inner = Inner()
    s = scope(method="POST", path="/docs/notes/a/update", content_type=content_type)
    await run(loopback_guard(inner), s)
    assert len(inner.calls) == 1


async def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(s: dict, receive: Any, send: Any) -> None:
        seen.append(s["type"])

    await BrowserGuard(app, [], "127.0.0.1", PORT)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]


# -- parsing ------------------------------------------------------------------------------------


def test_origins_are_normalized() -> None:
    assert normalize_origin("HTTP://Example.COM:80/") == "http://example.com"
    assert normalize_origin("https://a.example:443") == "https://a.example"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert parse_allowed_origins(" https://a.example, *,,https://a.example ") == [
        "https://a.example",
        "*",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "example.com",
        "https://a.example/path",
        "https://u@a.example",
        "https://a.example:99999",
        "https://a.example?q",
    ],
)
def test_bad_allowed_origins_are_refused(bad: str) -> None:
    with pytest.raises(InvalidOrigin):
        parse_allowed_origins(bad)
