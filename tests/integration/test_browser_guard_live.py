"""BrowserGuard in front of the real app on a real socket: cross-site writes and
WebSockets are refused, same-origin and non-browser clients work as before."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.guarded_server import guarded_server

pytestmark = pytest.mark.anyio

EVIL = "http://evil.example:8000"
MUTATION = '{"mutations": [{"t": "task", "id": "csrf", "op": "i", "p": {"title": "pwned"}}]}'


async def records(http: httpx.AsyncClient) -> list[dict]:
    response = await http.get("/sync/v1/records", params={"t": "task"})
    assert response.status_code == 200
    return response.json()["records"]


async def test_cross_site_text_plain_mutation_is_refused_and_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crdt_sync.browser_guard")
    async with guarded_server(tmp_path) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            # What a cross-site page's fetch(..., {mode: "no-cors"}) sends: no preflight.
            refused = await http.post(
                "/sync/v1/mutations",
                content=MUTATION,
                headers={"content-type": "text/plain", "origin": EVIL},
            )
            assert refused.status_code == 403
            assert refused.json()["error"] == "origin_not_allowed"
            # Same origin but not JSON: 415, nothing applied either.
            not_json = await http.post(
                "/sync/v1/mutations", content=MUTATION, headers={"content-type": "text/plain"}
            )
            assert not_json.status_code == 415
            assert await records(http) == []
            # The page's own origin, JSON: applied.
            ok = await http.post(
                "/sync/v1/mutations",
                content=MUTATION,
                headers={"content-type": "application/json", "origin": served.url},
            )
            assert ok.status_code == 200, ok.text
            assert ok.headers["access-control-allow-origin"] == served.url
            assert [r["id"] for r in await records(http)] == ["csrf"]
    lines = [r.getMessage() for r in caplog.records if r.name == "crdt_sync.browser_guard"]
    assert len(lines) == 2  # one per refusal
    assert repr(EVIL) in lines[0] and "/sync/v1/mutations" in lines[0]


async def test_binary_doc_update_keeps_working_without_content_type(tmp_path: Path) -> None:
    from pycrdt import Doc, Text

    doc = Doc()
    doc["body"] = Text("hi")
    async with guarded_server(tmp_path) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            response = await http.post("/docs/notes/bin/update", content=doc.get_update())
            assert response.status_code == 200, response.text
            assert response.json()["applied"] is True
            foreign = await http.post(
                "/docs/notes/bin/update", content=doc.get_update(), headers={"origin": EVIL}
            )
            assert foreign.status_code == 403


@pytest.mark.parametrize("path", ["/yjs/notes/ws-origin", "/sync/v1/ws"])
async def test_websocket_from_foreign_origin_is_refused_before_accept(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with guarded_server(tmp_path) as served:
        with anyio.fail_after(10):
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(served.ws + path, origin=EVIL):
                    pass
            assert refused.value.response.status_code == 403
            assert b"origin_not_allowed" in refused.value.response.body
            # No Origin (a non-browser client) and the server's own origin: accepted.
            for origin in (None, served.url):
                async with websockets.connect(served.ws + path, origin=origin) as ws:
                    if path.startswith("/yjs/"):
                        await ws.recv()  # sync step 1
                    else:
                        await ws.send('{"type":"ping"}')
                        await ws.recv()
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            health = (await http.get("/healthz")).json()
    assert health["status"] == "ok"
    text = caplog.text
    assert "without completing handshake" not in text
    assert "Exception in ASGI application" not in text


async def test_rebound_host_is_refused(tmp_path: Path) -> None:
    async with guarded_server(tmp_path) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            response = await http.get(
                "/sync/v1/records", headers={"host": f"rebind.example:{served.port}"}
            )
            assert response.status_code == 421
            assert response.json()["error"] == "host_not_allowed"
            assert (await http.get("/healthz", headers={"host": "localhost"})).status_code == 200
