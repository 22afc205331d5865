"""npm yjs + y-websocket editors against crdt-sync: convergence, offline edits, late
joiners, room names. The scenarios are ``tests/interop/js/*.mjs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Map, Text

from crdt_sync.client import connect

pytestmark = pytest.mark.interop


def assert_two_editors_converged(result: dict[str, Any]) -> None:
    """Check a ``two_editors.mjs`` result: every edit arrived, both replicas agree."""
    replicas = [result[side] for side in ("a", "b", "a_encoded", "b_encoded")]
    assert all(replica == replicas[0] for replica in replicas), replicas
    body, fields = replicas[0]["body"], dict(replicas[0]["fields"])
    assert body == "[A] hello from A [B]"
    # The concurrent `winner` writes resolve the same way everywhere; either may win.
    assert fields.pop("winner") in ("A", "B")
    assert fields == {"title": "from B", "count": 42, "tags": ["x", "y"]}
    assert result["a_sv"] == result["b_sv"]
    assert len(result["a_sv"]) == 2, "expected exactly the two editors' client ids"
    assert result["closes"] == 0, "an editor's connection was closed during the scenario"


def test_two_js_editors_converge(server, node) -> None:
    result = node.run("two_editors.mjs", server.ws_url, "notes/two-editors")["result"]
    assert_two_editors_converged(result)


def test_offline_edits_merge_on_reconnect(server, node) -> None:
    lines = node.run("offline.mjs", server.ws_url, "notes/offline")
    offline = lines["offline"]
    # While A was offline: the server relayed B's edit to C, and nobody saw A's.
    assert offline["a"] == {"body": "base|[A-off]", "fields": {"a": "offline edit"}}
    assert offline["b"] == offline["c"] == {"body": "[B-on]base|", "fields": {"b": "online edit"}}
    result = lines["result"]
    merged = {"body": "[B-on]base|[A-off]", "fields": {"a": "offline edit", "b": "online edit"}}
    assert result["a"] == result["b"] == result["c"] == merged
    assert result["a_sv"] == result["b_sv"]
    assert result["closes"] == 0


def write_then_read(node, ws_url: str, room: str, between=None) -> dict[str, Any]:
    """Two writers, one after the other, each leaving at once; then a late reader.

    ``between(ws_url) -> ws_url`` runs after the writers left (restart the server, ...).
    """
    first = node.run(
        "write_and_leave.mjs", ws_url, room, {"text": "one;", "key": "k1", "value": "v1"}
    )
    assert first["before"] == {"body": "", "fields": {}}
    second = node.run(
        "write_and_leave.mjs", ws_url, room, {"text": "two;" * 500, "key": "k2", "value": "v2"}
    )
    assert second["before"] == first["left"] == {"body": "one;", "fields": {"k1": "v1"}}
    if between is not None:
        ws_url = between(ws_url)
    return node.run("read.mjs", ws_url, room)["content"]


LATE_CONTENT = {"body": "one;" + "two;" * 500, "fields": {"k1": "v1", "k2": "v2"}}


def test_late_joiner_gets_full_state(server, node) -> None:
    content = write_then_read(node, server.ws_url, "notes/late")
    assert {"body": content["body"], "fields": content["fields"]} == LATE_CONTENT
    assert len(content["sv"]) == 2


def test_late_joiner_after_room_unloaded(server_factory, node) -> None:
    # --room-idle-seconds 0: the room is stored and dropped as soon as each writer
    # leaves, so the reader (and the second writer) load it back from the store.
    server = server_factory("--room-idle-seconds", "0.1")
    content = write_then_read(node, server.ws_url, "notes/late-unloaded")
    assert {"body": content["body"], "fields": content["fields"]} == LATE_CONTENT


def test_late_joiner_after_server_restart(server_factory, node, tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    first = server_factory(db=db)

    def restart(_ws_url: str) -> str:
        assert first.stop() == 0, first.log()
        return server_factory(db=db).ws_url

    content = write_then_read(node, first.ws_url, "notes/late-restart", between=restart)
    assert {"body": content["body"], "fields": content["fields"]} == LATE_CONTENT


def py_content(doc: Any) -> dict[str, Any]:
    return {"body": str(doc.get("body", type=Text)), "fields": doc.get("fields", type=Map).to_py()}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "room",
    [
        "issue/123",
        "héllo wörld",
        # WHATWG URL (ws, browsers) leaves ' ( ) ! unescaped; Python's quote() escapes
        # them: the server must decode both spellings to the same room.
        "notes/it's (ok)!/ünï",
    ],
)
async def test_room_names(server, node, room: str) -> None:
    result = node.run("two_editors.mjs", server.ws_url, room)["result"]
    assert_two_editors_converged(result)
    # The Python client spells the URL differently; it must land in the same doc.
    async with connect(server.ws_url, room) as client:
        with anyio.fail_after(10):
            await client.synced()
        assert py_content(client.doc) == result["b"]
