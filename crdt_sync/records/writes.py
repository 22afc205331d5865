"""Writes: a mutation's fields checked against a record doc and turned into a change.

:func:`plan_write` checks every field of a mutation's ``p`` against the doc (the value
model, see :mod:`crdt_sync.records.projection`, and the type of each root) and returns
the function that applies them all in one transaction, or raises :class:`FieldError`
with nothing applied (Yjs has no rollback). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pycrdt import Array, Doc, Map, Text

from persistence.framing import same
from persistence.values import valid_text

from .projection import FIELDS_ROOT, MAX_DEPTH, MAX_VALUE_BYTES, RootTypes, conform, plain

#: Yjs numbers are doubles: integers past this lose precision in every JS client.
MAX_SAFE_INTEGER = 2**53 - 1


class FieldError(ValueError):
    """A mutation field that cannot be written.

    Attributes:
        field: The field's name.
        status: The HTTP status that says why (422: wrong type or value).
    """

    def __init__(self, field: str, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.field = field
        self.status = status


def check_value(field: str, value: Any, depth: int = 0) -> None:
    """Refuse what is outside the value model (see :mod:`crdt_sync.records.projection`) or
    what a Yjs client could not hold exactly: non-finite numbers, lone surrogates,
    nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUE_BYTES` of JSON,
    integers past 2**53.

    Raises:
        FieldError: 422, nothing was applied.
    """
    _check(field, value, depth)
    if depth == 0 and conform(value)[1] == "too_large":
        raise FieldError(field, f"value larger than {MAX_VALUE_BYTES} bytes of JSON")


def _check(field: str, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FieldError(field, f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if valid_text(value) is not value:
            raise FieldError(field, "string is not valid Unicode (lone surrogate)")
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise FieldError(field, "integer outside the safe range of JS numbers (2**53)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(field, "number is not finite")
        return
    if isinstance(value, list):
        for item in value:
            _check(field, item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FieldError(field, "object keys must be strings")
            if valid_text(key) is not key:
                raise FieldError(field, "object key is not valid Unicode (lone surrogate)")
            _check(field, item, depth + 1)
        return
    raise FieldError(field, f"{type(value).__name__} is not a JSON value")


def replace_text(text: Text, old: str, new: str) -> None:
    """Turn ``old`` (the text's content) into ``new`` with one delete and one insert,
    keeping the common prefix and suffix (and so editors' cursors around them)."""
    n = min(len(old), len(new))
    start = 0
    while start < n and old[start] == new[start]:
        start += 1
    tail = 0
    while tail < n - start and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    # pycrdt indexes text by UTF-8 byte offsets.
    begin = len(old[:start].encode("utf-8"))
    end = len(old[: len(old) - tail].encode("utf-8"))
    if end > begin:
        del text[begin:end]
    inserted = new[start : len(new) - tail]
    if inserted:
        text.insert(begin, inserted)


def plan_write(doc: Doc, types: RootTypes, p: dict[str, Any]) -> Callable[[Doc], None]:
    """Check every field of ``p`` against ``doc``; return what writes them all.

    A field that is a root of the doc is written into that root (text replaced with a
    minimal edit, arrays and maps replaced); any other field is an entry of the
    ``fields`` map, removed when set to ``null``. Nothing is written unless every
    field is valid.

    Raises:
        FieldError: a field cannot be written (nothing was).
    """
    known = types.of(doc)
    roots = set(doc.keys())
    fields_kind = known.get(FIELDS_ROOT, Map)
    steps: list[Callable[[Doc], None]] = []
    for field, value in p.items():
        if not field:
            raise FieldError(field, "field names must not be empty", status=400)
        if valid_text(field) is not field:
            raise FieldError(field, "field name is not valid Unicode", status=400)
        check_value(field, value)
        kind = known.get(field)
        if field == FIELDS_ROOT and kind in (Map, None):
            kind = None  # the map of fields is not a field; "fields" is an entry of it
        elif kind is None and field in roots:
            # An empty root (emptied, or from before a reload): its type is unknown,
            # so the value says it. Clearing it is a no-op.
            if value is None:
                continue
            kind = {str: Text, list: Array, dict: Map}.get(type(value))
            if kind is None:
                raise FieldError(field, "this field is a text, array or map: not a scalar")
        if kind is None:
            if fields_kind is not Map:
                raise FieldError(field, "the record's 'fields' root is not a map")
            steps.append(_set_entry(field, value))
        elif kind is Text:
            if value is not None and not isinstance(value, str):
                raise FieldError(field, "this field is a text: its value must be a string")
            steps.append(_set_text(field, value or ""))
        elif kind is Array:
            if value is not None and not isinstance(value, list):
                raise FieldError(field, "this field is an array: its value must be a list")
            steps.append(_set_array(field, value or []))
        elif kind is Map:
            if value is not None and not isinstance(value, dict):
                raise FieldError(field, "this field is a map: its value must be an object")
            steps.append(_set_map(field, value or {}))
        else:
            raise FieldError(field, f"this field is a {kind.__name__} and cannot be written")

    def write(doc: Doc) -> None:
        for step in steps:
            step(doc)

    return write


def _set_entry(field: str, value: Any) -> Callable[[Doc], None]:
    def step(doc: Doc) -> None:
        fields = doc.get(FIELDS_ROOT, type=Map)
        if value is None:
            if field in fields:
                del fields[field]
        elif field not in fields or not same(plain(_py(fields[field])), plain(value)):
            fields[field] = value

    return step


def _py(value: Any) -> Any:
    return value.to_py() if isinstance(value, Map | Array) else value


def _set_text(field: str, value: str) -> Callable[[Doc], None]:
    def step(doc: Doc) -> None:
        text = doc.get(field, type=Text)
        replace_text(text, str(text), value)

    return step


def _set_array(field: str, value: list[Any]) -> Callable[[Doc], None]:
    def step(doc: Doc) -> None:
        array = doc.get(field, type=Array)
        if same(plain(array.to_py()), plain(value)):
            return
        del array[:]
        array.extend(value)

    return step


def _set_map(field: str, value: dict[str, Any]) -> Callable[[Doc], None]:
    def step(doc: Doc) -> None:
        ymap = doc.get(field, type=Map)
        for key in list(ymap.keys()):
            if key not in value:
                del ymap[key]
        for key, item in value.items():
            if key not in ymap or not same(plain(_py(ymap[key])), plain(item)):
                ymap[key] = item

    return step


__all__ = [
    "MAX_SAFE_INTEGER",
    "FieldError",
    "check_value",
    "plan_write",
    "replace_text",
]
