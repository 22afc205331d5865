"""Restore as a forward change (crdt_sync/version_restore.py), pure pycrdt.

The update restores the version's content on top of the current state; it merges
with concurrent edits like any other update, and editors' own undo stacks keep
working on their later work.
"""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, UndoManager, XmlElement, XmlFragment, XmlText

from crdt_sync.records.projection import doc_to_json
from crdt_sync.version_restore import restore_update


def sync(*docs: Doc) -> None:
    """Exchange everything between ``docs`` (as a server would relay it)."""
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.get_update(b.get_state()))


def content(doc: Doc) -> dict[str, Any]:
    return doc_to_json(doc)


def of_state(state: bytes) -> Doc:
    doc = Doc()
    doc.apply_update(state)
    return doc


def record_doc() -> tuple[Doc, Doc]:
    """A server doc and one editor, holding a record with text, fields and a list."""
    server, editor = Doc(), Doc()
    server["body"] = Text("hello world")
    server["fields"] = Map({"title": "T1", "n": 1, "tags": ["a", "b"]})
    server["items"] = Array([1, 2, Map({"k": "v"})])
    sync(server, editor)
    return server, editor


def test_restore_brings_back_text_and_map_edits_made_after_the_version() -> None:
    server, editor = record_doc()
    version = server.get_update()
    expected = content(of_state(version))
    server["body"].insert(5, " big")
    editor.get("body", type=Text).insert(0, ">> ")
    del server["body"][0:2]
    server["fields"]["title"] = "T2"
    del server["fields"]["n"]
    server["fields"]["new"] = True
    editor.get("items", type=Array).append(4)
    server["items"].pop(0)
    server["items"][1]["k"] = "changed"
    sync(server, editor)
    assert content(server) != expected
    update = restore_update(server.get_update(), version)
    assert update is not None
    server.apply_update(update)
    assert content(server) == expected
    sync(server, editor)
    assert content(editor) == expected


def test_applying_the_restore_twice_changes_nothing_more() -> None:
    server, _ = record_doc()
    version = server.get_update()
    server["body"] += " more"
    update = restore_update(server.get_update(), version)
    assert update is not None
    copy = of_state(server.get_update())
    server.apply_update(update)
    server.apply_update(update)  # a duplicate delivery
    copy.apply_update(update)
    assert content(server) == content(copy) == content(of_state(version))


def test_nothing_to_restore_when_nothing_changed() -> None:
    server, _ = record_doc()
    assert restore_update(server.get_update(), server.get_update()) is None


def test_a_concurrent_edit_made_after_the_restore_merges() -> None:
    server, a = record_doc()
    b = of_state(server.get_update())
    version = server.get_update()
    a.get("body", type=Text).insert(0, "draft: ")
    sync(server, a, b)
    update = restore_update(server.get_update(), version)
    assert update is not None
    # b edits concurrently with the restore (it has not seen it yet)
    b.get("body", type=Text).insert(len("draft: hello"), ",")
    b.get("fields", type=Map)["owner"] = "bob"
    server.apply_update(update)
    sync(server, a, b)
    assert content(server) == content(a) == content(b)
    # the restore removed "draft: "; b's comma and field survive
    assert str(server["body"]) == "hello, world"
    assert server["fields"].to_py()["owner"] == "bob"
    assert server["fields"].to_py()["title"] == "T1"


def test_an_editors_undo_of_its_own_later_work_still_works() -> None:
    server, editor = record_doc()
    version = server.get_update()
    server["body"] += " (server edit)"
    sync(server, editor)
    update = restore_update(server.get_update(), version)
    assert update is not None
    server.apply_update(update)
    sync(server, editor)
    body = editor.get("body", type=Text)
    undo = UndoManager(scopes=[body], capture_timeout_millis=0)
    body.insert(0, "X")
    assert str(body) == "Xhello world"
    undo.undo()
    assert str(body) == "hello world"
    undo.redo()
    sync(server, editor)
    assert str(server["body"]) == "Xhello world"


def test_roots_created_after_the_version_are_emptied_and_emptied_roots_refilled() -> None:
    server, _ = record_doc()
    version = server.get_update()
    server["extra"] = Text("new root")
    server["later"] = Map({"x": 1})
    del server["body"][0 : len(server["body"])]  # emptied since the version
    server["items"].clear()
    update = restore_update(server.get_update(), version)
    assert update is not None
    server.apply_update(update)
    got = content(server)
    assert str(server["body"]) == "hello world"
    assert server["items"].to_py() == [1.0, 2.0, {"k": "v"}]
    assert str(server["extra"]) == "" and server["later"].to_py() == {}
    assert {k: v for k, v in got.items() if k in ("body", "fields", "items")} == {
        k: v for k, v in content(of_state(version)).items()
    }


def test_xml_fragments_of_rich_text_editors_are_restored() -> None:
    server = Doc()
    frag = server.get("prosemirror", type=XmlFragment)
    frag.children.append(XmlElement("paragraph", {}, [XmlText("first")]))
    version = server.get_update()
    frag.children.append(XmlElement("paragraph", {}, [XmlText("second")]))
    first = frag.children[0]
    assert isinstance(first, XmlElement)
    text = first.children[0]
    assert isinstance(text, XmlText)
    text.insert(0, "the ")
    update = restore_update(server.get_update(), version)
    assert update is not None
    server.apply_update(update)
    assert str(server.get("prosemirror", type=XmlFragment)) == str(
        of_state(version).get("prosemirror", type=XmlFragment)
    )


def test_a_version_older_than_an_earlier_restore_is_restored_too() -> None:
    server, _ = record_doc()
    v1 = server.get_update()
    server["body"] += " two"
    v2 = server.get_update()
    server["body"] += " three"
    server.apply_update(restore_update(server.get_update(), v2) or b"")
    assert str(server["body"]) == "hello world two"
    server["fields"]["title"] = "after"
    server.apply_update(restore_update(server.get_update(), v1) or b"")
    assert content(server) == content(of_state(v1))
    server.apply_update(restore_update(server.get_update(), v2) or b"")
    assert str(server["body"]) == "hello world two" and server["fields"]["title"] == "T1"


def test_garbage_collected_current_state_still_restores_deleted_content() -> None:
    server, _ = record_doc()  # Doc() collects deleted content
    version = server.get_update()
    del server["body"][0:6]
    del server["fields"]["tags"]
    current = of_state(server.get_update())  # as loaded from the store: deletions gc'd
    update = restore_update(current.get_update(), version)
    assert update is not None
    current.apply_update(update)
    assert content(current) == content(of_state(version))


def test_bad_states_are_refused() -> None:
    with pytest.raises(ValueError):
        restore_update(b"\xff\xff\xff\xff", Doc().get_update())
