"""npm y-websocket editors keep syncing while raw sockets feed their room garbage
(``tests/interop/js/garbage.mjs``); each garbage socket is closed with the code
documented in ``rooms/close_codes.py``."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.interop


def test_garbage_sockets_closed_and_editors_unaffected(server, node) -> None:
    result = node.run("garbage.mjs", server.ws_url, "notes/garbage")["result"]
    raw = result["raw"]
    for kind, code in [("binary", 1002), ("text", 1003), ("bad_update", 1007)]:
        assert raw[kind]["opened"], raw[kind]
        assert raw[kind]["code"] == code, f"{kind}: expected close {code}, got {raw[kind]}"
        assert raw[kind]["reason"], f"{kind}: close without a reason: {raw[kind]}"

    expected = {"body": "before;during-a;after-b;", "fields": {"during": "b"}}
    assert result["a"] == result["b"] == result["late"] == expected
    assert result["editor_closes"] == [], "an editor was disconnected by someone else's garbage"
