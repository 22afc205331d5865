"""The input contract: one parser per kind of external input, used by every endpoint.

Each parser returns the value or raises :class:`InputError` (an ``error`` code, a
``detail`` for people, and the HTTP status it becomes); the endpoints turn that into
a 4xx JSON ``{error, detail}`` or their documented WebSocket close code. Nothing in
here raises anything else, for any input (fuzzed in ``tests/unit/test_inputs.py``).

* **Integers** in a query string or header (:func:`parse_uint`, :func:`query_int`):
  ASCII digits ``0-9`` only, at most 18 of them. ``"²"`` or ``"٣"`` (which
  ``str.isdigit()`` accepts), signs, spaces and underscores are refused.
* **JSON** (:func:`parse_json`): UTF-8, at most ``max_bytes``, nested at most
  :data:`MAX_JSON_DEPTH` arrays/objects deep, checked *before* parsing by a scan of
  the brackets outside strings (so no input reaches the parser's recursion);
  standard JSON only (no ``NaN``/``Infinity`` literals, no number that overflows to
  infinity); every string must be valid Unicode (a lone surrogate such as
  ``"\\ud800"`` is refused: it could not be encoded as UTF-8 again).
* **Names** (:func:`check_name`): documents, record types and ids, field names,
  client ids. A name is 1 to ``max_chars`` characters, none of them in the Unicode
  categories Cc (control), Cf (format: every bidirectional control U+202A-202E,
  U+2066-2069, U+200E/200F, U+061C and every zero-width character U+200B-200D,
  U+2060, U+FEFF is one), Cs (surrogate), Co (private use), Cn (unassigned in the
  Unicode version of this Python), Zl or Zp (line and paragraph separators).
  Everything else is allowed, spaces and emoji included; an emoji ZWJ sequence is
  refused for its U+200D. Names are compared as given (no normalisation).
"""

from __future__ import annotations

import re
import unicodedata

# JSON parsing lives with the wire codec (rooms), which needs it too; re-exported here
# so that every endpoint finds the whole input contract in one module.
from rooms.strict_json import MAX_JSON_DEPTH, InputError, check_unicode, json_depth, parse_json

__all__ = [
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "InputError",
    "check_name",
    "check_unicode",
    "describe_char",
    "json_depth",
    "parse_json",
    "parse_uint",
    "query_int",
    "refused_char",
]

#: Most digits of an integer in a query parameter or header (fits in a signed 64-bit int).
MAX_INT_DIGITS = 18
#: Unicode categories no name may contain (see the module docstring).
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_INT_DIGITS)


# -- integers --------------------------------------------------------------------------


def parse_uint(raw: str, name: str) -> int:
    """A non-negative integer written in ASCII digits.

    Raises:
        InputError: ``invalid_parameter`` for anything but 1 to 18 ASCII digits.
    """
    if not raw.isascii() or _DIGITS.fullmatch(raw.encode("ascii")) is None:
        raise InputError(
            "invalid_parameter",
            f"{name} must be a non-negative integer of at most {MAX_INT_DIGITS} "
            f"ASCII digits, got {raw[:40]!r}",
        )
    return int(raw)


def query_int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """An optional integer parameter from ``low`` to ``high`` (``default`` if absent)."""
    if raw is None or raw == "":
        return default
    try:
        value = parse_uint(raw, name)
    except InputError:
        value = low - 1
    if not low <= value <= high:
        raise InputError("invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return value


# -- names -----------------------------------------------------------------------------


def refused_char(text: str) -> str | None:
    """The first character of ``text`` that no name may hold, or ``None``."""
    if text.isascii():
        # Fast path: among ASCII only the controls (0-31, 127) are refused.
        if text.isprintable():
            return None
        return next(c for c in text if not c.isprintable())
    category = unicodedata.category
    for char in text:
        if category(char) in REFUSED_CATEGORIES:
            return char
    return None


def describe_char(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE, Cf)``: how error details name a character."""
    name = unicodedata.name(char, "unnamed")
    return f"U+{ord(char):04X} ({name}, {unicodedata.category(char)})"


def check_name(text: str, what: str, *, max_chars: int = 512, allow_empty: bool = False) -> str:
    """Return ``text`` if it is a valid name (see the module docstring).

    Raises:
        InputError: ``invalid_name``: empty, longer than ``max_chars``, or holding a
            refused character.
    """
    if not text and not allow_empty:
        raise InputError("invalid_name", f"{what} is empty")
    if len(text) > max_chars:
        raise InputError("invalid_name", f"{what} is longer than {max_chars} characters")
    char = refused_char(text)
    if char is not None:
        raise InputError("invalid_name", f"{what} contains {describe_char(char)}")
    return text
