"""Project a pycrdt ``Doc`` into JSON: every root type by name, text as a string.

Roots that arrive in updates have no type until someone asks for one, and asking
fixes it. So the type of each root is inferred on throw-away copies of the state,
never on the live doc: a map view with entries is a ``Y.Map``; an array view that
fails holds XML elements (``Y.XmlFragment``, as rich-text editors use); a text view
with characters is a ``Y.Text``; otherwise it is a ``Y.Array`` (or empty text).
"""

from __future__ import annotations

from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlFragment

JSON = Any


class _Views:
    """Throw-away copies of one doc state, one per probe type, made on first use.

    Asking for a root's type fixes it only for that root, so one copy per type
    serves every root: at most four decodes of the state, however many roots.
    """

    def __init__(self, update: bytes) -> None:
        self._update = update
        self._copies: dict[type, Doc] = {}

    def of(self, key: str, kind: type) -> Any:
        copy = self._copies.get(kind)
        if copy is None:
            copy = self._copies[kind] = Doc()
            copy.apply_update(self._update)
        return copy.get(key, type=kind)


def plain(value: JSON) -> JSON:
    """Yjs numbers are doubles: give integral ones back as ints (``3``, not ``3.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _infer(views: _Views, key: str) -> type | None:
    """The type of root ``key``, or ``None`` while it is empty (any type would do)."""
    if len(views.of(key, Map)):
        return Map
    # Text before Array: an array view of a long text would list every character.
    # A text view of an array or XML root has a length but reads as "".
    as_text = views.of(key, Text)
    if len(as_text) and str(as_text):
        return Text
    try:
        as_list = views.of(key, Array).to_py()
    except Exception:
        return XmlFragment
    return Array if as_list else None


def root_value(root: Any) -> JSON:
    """The JSON of a typed root: text and XML as strings, maps and arrays as JSON."""
    if isinstance(root, Map | Array):
        return plain(root.to_py())
    return str(root)


def infer_root_types(doc: Doc, keys: list[str]) -> dict[str, type | None]:
    """The type of each root in ``keys``, inferred on copies (the live doc is not typed)."""
    if not keys:
        return {}
    views = _Views(doc.get_update())
    return {key: _infer(views, key) for key in keys}


def _root_to_json(views: _Views, key: str) -> JSON:
    kind = _infer(views, key)
    return "" if kind is None else root_value(views.of(key, kind))


def doc_to_json(doc: Doc) -> dict[str, JSON]:
    """Every root of ``doc`` by name, as JSON."""
    views = _Views(doc.get_update())
    return {key: _root_to_json(views, key) for key in sorted(doc.keys())}
