"""JSON from the network parsed within bounds (used by the wire codec and the HTTP
input contract, :mod:`crdt_sync.inputs`).

UTF-8, at most ``max_bytes``, nested at most :data:`MAX_JSON_DEPTH` arrays/objects
deep, checked *before* parsing by a scan of the brackets outside strings (so no input
reaches the parser's recursion); standard JSON only (no ``NaN``/``Infinity`` literals,
no number that overflows to infinity); every string must be valid Unicode (a lone
surrogate such as ``"\\ud800"`` is refused: it could not be encoded as UTF-8 again).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

#: Deepest nesting of arrays and objects accepted in any JSON input.
MAX_JSON_DEPTH = 64

# A JSON string (unrolled loop: the regex engine, not Python, walks its characters).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
# A \u escape of a surrogate: only then can a parsed string hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InputError(ValueError):
    """An external input refused by the contract.

    Attributes:
        error: A stable code (``invalid_json``, ``too_deep``, ``too_large``,
            ``invalid_parameter``, ``invalid_name``).
        detail: What was wrong, for people (client values in it are ``repr``-quoted).
        status: The HTTP status this refusal becomes.
    """

    def __init__(self, error: str, detail: str, *, status: int = 400) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.status = status


# -- JSON ------------------------------------------------------------------------------


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw`` (brackets inside strings ignored).

    A cheap scan, done before parsing: strings are cut out by one regex, the rest is
    reduced to its brackets, and the running sum of +1/-1 is taken in C. Malformed
    input gets some number; the parser refuses it afterwards.
    """
    if b"[" not in raw and b"{" not in raw:
        return 0
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_BRACKET_STEPS)).cast("b")
    return max(accumulate(steps))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def parse_json(
    data: bytes | str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, what: str = "body"
) -> Any:
    """Parse untrusted JSON within bounds checked before the parser runs.

    Args:
        data: The raw input (bytes must be UTF-8).
        max_bytes: Largest input accepted (in UTF-8 bytes).
        max_depth: Deepest nesting of arrays/objects accepted.
        what: Names the input in error details (``body``, ``message``, ...).

    Raises:
        InputError: ``too_large`` (413), ``too_deep`` or ``invalid_json`` (400).
    """
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("invalid_json", f"{what} is not valid Unicode") from None
        text = data
    else:
        raw = data
        text = None
    if len(raw) > max_bytes:
        raise InputError("too_large", f"{what} of {len(raw)} bytes exceeds {max_bytes}", status=413)
    if text is None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"{what} is not UTF-8: {exc.reason} at byte {exc.start}"
            raise InputError("invalid_json", detail) from None
    depth = json_depth(raw)
    if depth > max_depth:
        raise InputError("too_deep", f"{what} nests deeper than {max_depth} arrays/objects")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:  # JSONDecodeError, our refusals, int digit limit
        raise InputError("invalid_json", f"{what} is not JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw) is not None:
        check_unicode(value, what)
    return value


def check_unicode(value: Any, what: str = "value") -> None:
    """Every string in a parsed JSON value (keys too) must be encodable as UTF-8.

    Raises:
        InputError: ``invalid_json`` naming the first lone surrogate.
    """
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8")
    except UnicodeEncodeError as exc:
        char = exc.object[exc.start]
        detail = f"{what} holds a lone surrogate U+{ord(char):04X}: not valid Unicode"
        raise InputError("invalid_json", detail) from None
