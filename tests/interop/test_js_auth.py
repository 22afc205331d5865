"""Issue 11 with the real npm y-websocket client (token as ``params: {token}``).

- A read-only viewer: its edits reach neither the other client nor the store, while
  its awareness cursor is still seen (``auth_readonly.mjs``, then ``auth_read.mjs``
  and ``GET /docs/{doc}`` as the independent witnesses).
- Token expiry mid-session: the server closes 4401 at ``exp``; the client
  reconnects with a fresh token and keeps every edit (``auth_expiry.mjs``).
"""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest

from tests.integration.auth_support import SECRET, bearer, token

pytestmark = pytest.mark.interop


def stored_body(server, room: str) -> str:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.get(f"/docs/{room}", headers=bearer(token(mode="read")))
    assert response.status_code == 200, response.text
    return response.json()["content"]


def test_read_only_client_edits_reach_no_one_but_its_cursor_is_seen(server_factory, node) -> None:
    server = server_factory("--auth-secret", SECRET)
    room = f"auth/readonly-{uuid.uuid4().hex[:8]}"
    grants = {
        "write_token": token(sub="writer", docs=("auth/*",), mode="write"),
        "read_token": token(sub="viewer", docs=("auth/*",), mode="read"),
    }
    scenario = node.start("auth_readonly.mjs", server.ws_url, room, grants)
    cursor = scenario.expect("cursor_seen", timeout=20)
    assert cursor["cursor"] == {"index": 3}, cursor
    result = scenario.finish()["result"]
    assert "READER-EDIT" not in result["writer"], result
    assert "hacked" not in result["writer_fields"], result
    assert result["writer"] == "W1 W2", result
    assert "READER-EDIT" in result["viewer"], "the viewer keeps its local edit"
    assert result["viewer_closes"] == [], "a reader is not disconnected for trying to write"
    content = stored_body(server, room)
    assert content["body"] == "W1 W2" and "hacked" not in content.get("fields", {}), content
    late = node.run("auth_read.mjs", server.ws_url, room, {"token": grants["write_token"]})
    assert late["content"]["body"] == "W1 W2", late
    assert late["content"]["fields"] == {}, late


def test_read_only_client_is_refused_outside_its_grant(server_factory, node) -> None:
    server = server_factory("--auth-secret", SECRET)
    refused = node.run(
        "auth_read.mjs", server.ws_url, "private/x", {"token": token(docs=("auth/*",))}
    )
    assert refused["refused"]["code"] == 4403, refused
    bad = node.run("auth_read.mjs", server.ws_url, "auth/x", {"token": "garbage"})
    assert bad["refused"]["code"] == 4401, bad


def test_token_expiry_closes_4401_and_reconnect_with_fresh_token_keeps_edits(
    server_factory, node
) -> None:
    server = server_factory("--auth-secret", SECRET)
    room = f"auth/expiry-{uuid.uuid4().hex[:8]}"
    short = token(sub="alice", docs=("auth/*",), mode="write", ttl=4)
    exp = jwt.decode(short, options={"verify_signature": False})["exp"]
    watch = token(sub="watcher", docs=("auth/*",), mode="write", ttl=600)
    scenario = node.start(
        "auth_expiry.mjs", server.ws_url, room, {"token": short, "watch_token": watch}
    )
    connected = scenario.expect("connected", timeout=15)
    assert connected["at"] / 1000 < exp, "the scenario was too slow to start before exp"
    expired = scenario.expect("expired", timeout=15)
    assert expired["code"] == 4401, expired
    closed_at = expired["at"] / 1000
    # closed at exp (same machine, same clock), not only at the next message or ping
    assert exp - 0.5 <= closed_at <= exp + 1.5, (closed_at, exp)
    scenario.send("token " + token(sub="alice", docs=("auth/*",), mode="write", ttl=600))
    converged = scenario.expect("converged", timeout=20)
    for edit in ("before-expiry;", "while-disconnected;", "around-reconnect;"):
        assert edit in converged["watcher"], converged
    assert converged["watcher_closes"] == [], "the watcher's own session was not touched"
    scenario.finish()
    assert stored_body(server, room)["body"] == converged["watcher"]
    assert time.time() > exp
