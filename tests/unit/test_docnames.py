"""Document names follow the name rule of crdt_sync.inputs: visible Unicode only."""

from __future__ import annotations

import pytest

from crdt_sync.docnames import InvalidDocName, split_record, validate_doc_name
from crdt_sync.inputs import InputError


@pytest.mark.parametrize(
    "name",
    [
        "invoice\u202egpj.exe",  # RIGHT-TO-LEFT OVERRIDE: shows as "invoiceexe.jpg"
        "task/\u2066x\u2069",  # bidi isolate
        "task/1\u200b",  # ZERO WIDTH SPACE: looks like "task/1"
        "\ufefftask/1",  # BOM
        "a\u200db",  # ZERO WIDTH JOINER
        "red\x1b[31m",  # terminal escape
        "line\nbreak",
        "a\u2028b",
    ],
)
def test_doc_names_refuse_bidi_zero_width_and_control_characters(name) -> None:
    with pytest.raises(InvalidDocName) as info:
        validate_doc_name(name)
    assert isinstance(info.value, InputError)
    assert info.value.error == "invalid_doc_name" and "U+" in info.value.detail


@pytest.mark.parametrize("name", ["issue/123", "héllo wörld", "a/b/c", "emoji 😀", "中文/文档"])
def test_doc_names_allow_visible_unicode_and_slashes(name) -> None:
    assert validate_doc_name(name) == name


def test_records_split_at_the_first_slash() -> None:
    assert split_record("task/a/b") == ("task", "a/b")
    assert split_record("plain") is None
