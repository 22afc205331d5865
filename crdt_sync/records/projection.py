"""Projection: a doc's state as JSON, and a record doc as its fields. Pure: no I/O.

A record ``(t, id)`` is the doc ``t/id`` (DESIGN.md). Its fields (:func:`project`) are
the entries of the root ``Y.Map`` named ``fields`` plus every other root type by name
(``Y.Text`` as a string, ``Y.Array``/``Y.Map`` as JSON, XML as its string). Where a root
and an entry of ``fields`` share a name, the root wins: it is what editors see.
:func:`diff` compares two projections into a SyncFrame ``p`` (the rule the stores
settle drafts with, :mod:`persistence.framing`); :func:`doc_to_json` is any doc by root.

Roots that arrive in updates have no type until someone asks for one, and asking
fixes it. So the type of each root is inferred on throw-away copies of the state,
never on the live doc: a map view with entries is a ``Y.Map``; an array view that
fails holds XML elements (``Y.XmlFragment``, as rich-text editors use); a text view
with characters is a ``Y.Text``; otherwise it is a ``Y.Array`` (or empty text).

The value model (README, "Record values"): whatever a doc holds, what leaves this
module is strict JSON (:func:`conform`). A CRDT can hold what JSON cannot (NaN and
infinities from any Yjs editor, binary, sub-docs, nesting of any depth, values of
any size); those parts are projected as ``null``, lone surrogates as U+FFFD, and the
CRDT itself is left as it is. HTTP mutations refuse the same values before they are
applied (:func:`crdt_sync.records.writes.check_value`), so only Yjs clients can put
them there.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlFragment

from persistence.framing import diff, same
from persistence.values import valid_text

log = logging.getLogger(__name__)

JSON = Any

#: The root ``Y.Map`` of a record's scalar fields.
FIELDS_ROOT = "fields"

#: A value nested deeper than this below a field (the field's value is level 0) is
#: projected as ``null``; HTTP mutations refuse it.
MAX_DEPTH = 32
#: A field whose compact JSON text is longer than this (UTF-8 bytes) is projected as
#: ``null``; HTTP mutations refuse it.
MAX_VALUE_BYTES = 1 << 20

#: Why a value was projected differently from what the doc holds (metrics labels).
NON_FINITE = "non_finite"
INVALID_UNICODE = "invalid_unicode"
TOO_DEEP = "too_deep"
TOO_LARGE = "too_large"
NOT_JSON = "not_json"

#: Values of record fields projected into the model, by reason (first time per field
#: of a loaded record): ``crdt_sync_values_conformed_total{reason}``.
CONFORMED: Counter[str] = Counter()


def conform(value: Any) -> tuple[JSON, str | None]:
    """``value`` within the value model, and why it had to change (``None``: it did not).

    Integral doubles below 2**53 become ints (Yjs numbers are doubles). Never raises:
    the result always serialises with ``allow_nan=False`` and encodes as UTF-8.
    """
    reasons: list[str] = []
    budget = [0]  # an upper bound of the UTF-8 bytes of the JSON text
    out = _conform(value, 0, reasons, budget)
    if budget[0] > MAX_VALUE_BYTES:
        if isinstance(out, str):
            size = len(out.encode("utf-8")) + 2
        else:
            text = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            size = len(text.encode("utf-8"))
        if size > MAX_VALUE_BYTES:
            return None, TOO_LARGE
    return out, reasons[0] if reasons else None


_BASES = (bool, str, float, int, dict, list, tuple)


def _conform(value: Any, depth: int, reasons: list[str], budget: list[int]) -> JSON:
    # Dispatch on the exact type first: this runs for every value of every projection.
    kind = type(value)
    if kind is str:
        return _text(value, reasons, budget)
    if kind is float:
        budget[0] += 24
        if value - value != 0.0:  # NaN or an infinity
            reasons.append(NON_FINITE)
            return None
        if value.is_integer() and -(2**53) < value < 2**53:
            return int(value)
        return value
    if kind is int:
        budget[0] += 24 if -(2**63) <= value < 2**63 else len(str(value))
        return value
    if value is None or kind is bool:
        budget[0] += 5
        return value
    if kind is dict or kind is list or kind is tuple:
        budget[0] += 2 + 2 * len(value)
        if depth >= MAX_DEPTH:  # its items are deeper than the bound
            if value:
                reasons.append(TOO_DEEP)
            if kind is dict:
                return {_text(k, reasons, budget): None for k in value if type(k) is str}
            return [None] * len(value)
        if kind is dict:
            out = {}
            for key, item in value.items():
                if type(key) is not str:
                    reasons.append(NOT_JSON)
                    continue
                out[_text(key, reasons, budget)] = _conform(item, depth + 1, reasons, budget)
            return out
        return [_conform(item, depth + 1, reasons, budget) for item in value]
    for base in _BASES:  # a subclass (an IntEnum, a str subclass): as its JSON base
        if isinstance(value, base):
            return _conform(base(value), depth, reasons, budget)
    reasons.append(NOT_JSON)  # binary, a sub-doc, ...
    budget[0] += 4
    return None


def _text(value: str, reasons: list[str], budget: list[int]) -> str:
    budget[0] += 6 * len(value) + 2  # JSON escapes take at most 6 bytes per character
    if value.isascii():
        return value
    fixed = valid_text(value)
    if fixed is not value:
        reasons.append(INVALID_UNICODE)
    return fixed


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
    """Every root of ``doc`` by name, as JSON within the value model (see :func:`conform`)."""
    views = _Views(doc.get_update())
    return {valid_text(key): conform(_root_to_json(views, key))[0] for key in sorted(doc.keys())}


class RootTypes:
    """The type of each root of one record doc, inferred once it has content.

    A root's type cannot change once it holds something, so it is inferred on a
    throw-away copy the first time it is seen non-empty and then read live.

    Args:
        name: The record's doc name, for the log line of a value projected into the
            value model (one per field and reason while the record is loaded).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._known: dict[str, type] = {}
        self._empty_at: bytes | None = None  # state when the unknown roots were all empty
        self._conformed: set[tuple[str, str]] = set()

    def conformed(self, field: str, reason: str) -> None:
        """Field ``field`` was projected into the value model: log and count it once."""
        if (field, reason) in self._conformed:
            return
        self._conformed.add((field, reason))
        CONFORMED[reason] += 1
        log.warning(
            "record %r field %r: value outside the value model (%s), projected as %s",
            self.name,
            field,
            reason,
            "U+FFFD" if reason == "invalid_unicode" else "null",
        )

    def of(self, doc: Doc) -> dict[str, type]:
        """Types of the roots of ``doc`` that ever held something (empty ones left out)."""
        unknown = [key for key in doc.keys() if key not in self._known]
        if not unknown:
            return self._known
        state = doc.get_state()
        if state == self._empty_at:  # nothing changed since they were found empty
            return self._known
        for key, kind in infer_root_types(doc, unknown).items():
            if kind is not None:
                self._known[key] = kind
        still_empty = any(key not in self._known for key in unknown)
        self._empty_at = state if still_empty else None
        return self._known


def project(doc: Doc, types: RootTypes) -> dict[str, JSON]:
    """The fields of a record doc (see the module docstring).

    A root with nothing in it is not a field (an emptied text is removed: ``null`` in
    a frame): emptiness is a property of the content, so the projection is the same
    whether the room was just loaded or has been live all along.
    """
    known = types.of(doc)
    raw: dict[str, JSON] = {}
    if known.get(FIELDS_ROOT) is Map:
        raw.update(doc.get(FIELDS_ROOT, type=Map).to_py())
    for key, kind in known.items():
        if key == FIELDS_ROOT and kind is Map:
            continue
        value = root_value(doc.get(key, type=kind))
        if value:
            raw[key] = value
    # The value model's one boundary for records: what is framed and stored.
    fields: dict[str, JSON] = {}
    for key, value in raw.items():
        name = valid_text(key)
        if name is not key:
            types.conformed(name, "invalid_unicode")
        fields[name], reason = conform(value)
        if reason is not None:
            types.conformed(name, reason)
    return fields


__all__ = [
    "CONFORMED",
    "FIELDS_ROOT",
    "JSON",
    "MAX_DEPTH",
    "MAX_VALUE_BYTES",
    "RootTypes",
    "conform",
    "diff",
    "doc_to_json",
    "infer_root_types",
    "plain",
    "project",
    "root_value",
    "same",
]
