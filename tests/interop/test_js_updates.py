"""The update check (rooms.codec.check_update) accepts every update the npm yjs
encoder writes: every content type, formatting, embeds, subdocs, XML, deletions,
concurrent merges (``tests/interop/js/all_content.mjs``)."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from pycrdt import Doc, Text

from rooms.codec import check_update
from tests.interop.conftest import JS_DIR

pytestmark = pytest.mark.interop


def test_every_yjs_update_passes_the_check(node_bin) -> None:
    out = subprocess.run(
        [node_bin, str(JS_DIR / "all_content.mjs")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    updates = [base64.b64decode(line["update"]) for line in lines]
    assert len(updates) > 200
    for update in updates:
        check_update(update)
    doc = Doc()
    for line, update in zip(lines, updates, strict=True):
        if line["event"] != "check_only":
            doc.apply_update(update)
    assert str(doc.get("body", type=Text)).startswith("concurrent ")
