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


def _view(update: bytes, key: str, kind: type) -> Any:
    copy: Doc = Doc()
    copy.apply_update(update)
    return copy.get(key, type=kind)


def plain(value: JSON) -> JSON:
    """Yjs numbers are doubles: give integral ones back as ints (``3``, not ``3.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def root_to_json(update: bytes, key: str) -> JSON:
    """JSON of root ``key`` of the doc whose full state is ``update``."""
    as_map = _view(update, key, Map)
    if len(as_map):
        return plain(as_map.to_py())
    try:
        as_list = _view(update, key, Array).to_py()
    except Exception:
        return str(_view(update, key, XmlFragment))
    text = str(_view(update, key, Text))
    if text or not as_list:
        return text
    return plain(as_list)


def doc_to_json(doc: Doc) -> dict[str, JSON]:
    """Every root of ``doc`` by name, as JSON."""
    update = doc.get_update()
    return {key: root_to_json(update, key) for key in sorted(doc.keys())}
