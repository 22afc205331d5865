"""npm yjs + y-websocket editors through a version restore (issue 15, item 4): they
stay connected, receive the restore as a normal update, keep editing, and their own
Y.UndoManager still undoes only their own later work. Scenario: js/restore_live.mjs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.interop


def test_three_js_editors_stay_connected_through_a_restore(server, node) -> None:
    lines = node.run("restore_live.mjs", server.ws_url, "notes/js-restore", timeout=40)
    version = lines["version"]
    assert version["content"] == {"body": "hello", "fields": {"title": "T1", "tags": ["x"]}}
    restored = lines["restored"]
    assert restored["edited"]["body"] == ">> hello world"
    at_version = {"body": "hello", "fields": {"title": "T1", "tags": ["x"]}}
    assert restored["a"] == restored["b"] == restored["c"] == at_version
    assert restored["restored"]["changed"] is True
    result = lines["result"]
    # later edits on top of the restored content, nothing duplicated
    fields = {"title": "T1", "tags": ["x"], "after": 1}
    assert result["afterEdits"] == {"body": "# hello again", "fields": fields}
    # A's undo took back A's own later work only
    assert result["afterUndo"] == {"body": "# hello", "fields": fields}
    final = {"body": "# hello again", "fields": fields}
    assert result["final"] == [final, final, final]
    assert result["server"] == final
    assert result["closes"] == 0 and result["connects"] == [1, 1, 1]  # nobody reconnected
