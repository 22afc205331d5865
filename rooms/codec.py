"""The y-websocket wire protocol, decoded strictly and without I/O.

One WebSocket binary frame carries one message (y-websocket ``messageHandlers``):

=====  ===========================  ==========================================
type   name                         body
=====  ===========================  ==========================================
0      sync                         varUint sub-type, varUint8Array payload
                                    (0 step1 = state vector, 1 step2 = update,
                                    2 update)
1      awareness                    varUint8Array awareness update
2      auth                         varUint sub-type (0 = permission denied),
                                    varString reason
3      query-awareness              (nothing)
=====  ===========================  ==========================================

pycrdt's ``Decoder`` is lenient (it reads past the end, accepts trailing bytes and
overlong integers). Frames come from the network, so this module checks every
length and raises :class:`ProtocolError` on anything a conforming client would not
send. Varints follow lib0: 7 bits a byte, little-endian, at most 53 significant
bits (``Number.MAX_SAFE_INTEGER``).

Encoding lives here too: one module owns the wire format both ways. A room only ever
encodes messages from state it holds, so the encoders never fail on valid input.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NoReturn, assert_never

from .strict_json import InputError, parse_json

__all__ = [
    "AwarenessEntry",
    "InvalidPayload",
    "ProtocolError",
    "check_update",
    "decode_message",
    "decode_state_vector",
    "encode_message",
    "write_var_bytes",
    "write_var_uint",
]

MAX_SAFE_INTEGER = (1 << 53) - 1


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness state as sent: ``state`` is its JSON text (``"null"`` = gone)."""

    client_id: int
    clock: int
    state: str

    @property
    def removed(self) -> bool:
        return self.state == "null"


def write_var_uint(value: int) -> bytes:
    """lib0 ``writeVarUint``: 7 bits a byte, little-endian, high bit = more."""
    if value < 0 or value > MAX_SAFE_INTEGER:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def write_var_bytes(data: bytes) -> bytes:
    return write_var_uint(len(data)) + data


def encode_sync_step1(state_vector: bytes) -> bytes:
    return b"\x00\x00" + write_var_bytes(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return b"\x00\x01" + write_var_bytes(update)


def encode_sync_update(update: bytes) -> bytes:
    return b"\x00\x02" + write_var_bytes(update)


def encode_awareness_update(entries: list[AwarenessEntry] | tuple[AwarenessEntry, ...]) -> bytes:
    """A whole awareness *message* (type 1) carrying ``entries``."""
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        state = entry.state.encode("utf-8")
        parts += (write_var_uint(entry.client_id), write_var_uint(entry.clock))
        parts += (write_var_uint(len(state)), state)
    return b"\x01" + write_var_bytes(b"".join(parts))


def encode_auth(sub_type: int, reason: str) -> bytes:
    """Auth message; sub-type 0 is ``permission denied``."""
    return b"\x02" + write_var_uint(sub_type) + write_var_bytes(reason.encode("utf-8"))


def encode_query_awareness() -> bytes:
    return b"\x03"


_MAX_VARINT_BYTES = 8  # 8 * 7 = 56 bits >= 53


class ProtocolError(ValueError):
    """A frame that is not a well-formed y-websocket message (close 1002)."""


class InvalidPayload(ProtocolError):
    """A well-framed message whose content is refused (close 1007): an awareness
    state that is not JSON under the input contract (:func:`inputs.parse_json`:
    bounded depth, valid Unicode, no NaN)."""


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class Auth:
    sub_type: int
    reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


Message = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessUpdate | Auth | QueryAwareness


class Reader:
    """A bounds-checked cursor over a byte string (lib0 ``decoding`` semantics)."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def var_uint(self) -> int:
        data, pos, end = self._data, self._pos, len(self._data)
        value = 0
        shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            if pos >= end:
                raise ProtocolError(f"truncated varint at byte {pos}")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value > MAX_SAFE_INTEGER:
                    raise ProtocolError(f"varint {value} exceeds 2**53-1")
                self._pos = pos
                return value
            shift += 7
        raise ProtocolError(f"varint longer than {_MAX_VARINT_BYTES} bytes at byte {self._pos}")

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        start = self._pos
        if length > len(self._data) - start:
            raise ProtocolError(
                f"payload of {length} bytes declared at byte {start}, "
                f"only {len(self._data) - start} left"
            )
        self._pos = start + length
        return self._data[start : self._pos]

    def var_string(self) -> str:
        raw = self.var_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"string is not valid UTF-8: {exc.reason}") from None

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolError(f"{len(self._data) - self._pos} trailing bytes after message")


def decode_message(frame: bytes) -> Message:
    """Decode one WebSocket binary frame.

    Raises:
        ProtocolError: the frame is empty, truncated, of an unknown type, or has
            trailing bytes.
        InvalidPayload: an update that :func:`check_update` refuses, or an awareness
            state that is not JSON.
    """
    reader = Reader(frame)
    kind = reader.var_uint()
    message: Message
    if kind == MessageType.SYNC:
        sub = reader.var_uint()
        payload = reader.var_bytes()
        if sub == SyncType.STEP1:
            message = SyncStep1(payload)
        elif sub == SyncType.STEP2:
            message = SyncStep2(payload)
        elif sub == SyncType.UPDATE:
            message = SyncUpdate(payload)
        else:
            raise ProtocolError(f"unknown sync message type {sub}")
    elif kind == MessageType.AWARENESS:
        message = AwarenessUpdate(decode_awareness_update(reader.var_bytes()))
    elif kind == MessageType.AUTH:
        message = Auth(reader.var_uint(), reader.var_string())
    elif kind == MessageType.QUERY_AWARENESS:
        message = QueryAwareness()
    else:
        raise ProtocolError(f"unknown message type {kind}")
    reader.end()
    if isinstance(message, SyncStep2 | SyncUpdate):
        check_update(message.update)
    return message


# -- Yjs v1 updates ----------------------------------------------------------------------

#: Largest clock (and clock + length) of an update. yrs keeps clocks in 32 bits and, past
#: this, wraps (measured with pycrdt 0.14: an item at clock 2**32-1 integrates twice, a
#: later update allocates 4 GiB) or silently truncates a larger varint.
MAX_CLOCK = 2**32 - 1
#: Deepest nesting of lib0 "any" values (arrays/objects) in an update: yrs decodes them
#: recursively and a nesting some ten thousand deep overflows its stack (segfault).
MAX_ANY_DEPTH = 64

#: Updates larger than this are checked off the event loop by the endpoints: about
#: 0.3 s a megabyte of small structs in pure Python.
LARGE_UPDATE_BYTES = 64 * 1024

_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_XML_ELEMENT, _XML_HOOK = 3, 5  # type refs that carry a name


def check_update(update: bytes) -> None:
    """Walk a Yjs v1 update (Yjs ``readClientsStructRefs`` / ``readDeleteSet``) and refuse
    what yrs would mishandle instead of rejecting: clocks past :data:`MAX_CLOCK`, "any"
    values nested deeper than :data:`MAX_ANY_DEPTH`, counts larger than the bytes that
    hold them. Nothing is allocated per declared count; the work is linear in the size.

    Trailing bytes after the delete set are left to yrs (Yjs ignores them too).

    Raises:
        InvalidPayload: the update is truncated, malformed or out of those bounds.
    """
    try:
        _check_delete_set(update, _check_structs(update))
    except IndexError:
        raise InvalidPayload("malformed update: truncated") from None


# The walk below is flat on purpose (no Reader objects, one-byte varints inlined): it
# runs on every update a client sends, and a 1 MB update holds some 40,000 structs.
# Each helper takes the position and returns ``(value, position)``.


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = shift = 0
    for _ in range(_MAX_VARINT_BYTES):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > MAX_SAFE_INTEGER:
                raise InvalidPayload(f"malformed update: varint {value} exceeds 2**53-1")
            return value, pos
        shift += 7
    raise InvalidPayload(f"malformed update: varint longer than {_MAX_VARINT_BYTES} bytes")


def _skip_uint(data: bytes, pos: int) -> int:
    """Skip a varint whose value does not matter (a client id)."""
    end = pos + _MAX_VARINT_BYTES
    while data[pos] >= 0x80:
        pos += 1
        if pos >= end:
            raise InvalidPayload(f"malformed update: varint longer than {_MAX_VARINT_BYTES} bytes")
    return pos + 1


def _count(data: bytes, pos: int, what: str, min_bytes: int = 1) -> tuple[int, int]:
    count, pos = _uint(data, pos)
    if count * min_bytes > len(data) - pos:
        raise InvalidPayload(f"update claims {count} {what} in {len(data) - pos} bytes")
    return count, pos


def _skip_bytes(data: bytes, pos: int) -> int:
    length, pos = _uint(data, pos)
    end = pos + length
    if end > len(data):
        raise InvalidPayload(f"malformed update: {length} bytes declared, {len(data) - pos} left")
    return end


def _clock_error(value: int, what: str) -> NoReturn:
    raise InvalidPayload(f"update {what} {value} exceeds 2**32-1")


def _check_structs(data: bytes) -> int:
    clients, pos = _count(data, 0, "clients", 3)
    for _ in range(clients):
        structs, pos = _count(data, pos, "structs")
        pos = _skip_uint(data, pos)  # client id (any 53-bit number)
        clock, pos = _uint(data, pos)
        for _ in range(structs):
            info = data[pos]
            pos += 1
            ref = info & 0x1F
            if ref == _GC or ref == _SKIP:
                length, pos = _uint(data, pos)
            else:
                if info & 0xC0:  # origin and/or right origin: (client, clock) ids
                    for _ in range(2 if info & 0xC0 == 0xC0 else 1):
                        pos = _skip_uint(data, pos)
                        id_clock, pos = _uint(data, pos)
                        if id_clock > MAX_CLOCK:
                            _clock_error(id_clock, "id clock")
                else:
                    parent, pos = _uint(data, pos)
                    if parent == 1:
                        pos = _skip_bytes(data, pos)  # root type name
                    else:
                        pos = _skip_uint(data, pos)  # parent item id
                        id_clock, pos = _uint(data, pos)
                        if id_clock > MAX_CLOCK:
                            _clock_error(id_clock, "id clock")
                    if info & 0x20:
                        pos = _skip_bytes(data, pos)  # parent map key
                length, pos = _content(data, pos, ref)
            clock += length
            if clock > MAX_CLOCK:
                _clock_error(clock, "clock")
    return pos


def _content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    """The clock length of an item's content, and the position after it."""
    if ref == _STRING:  # its clock length is in UTF-16 code units, as JavaScript counts
        length, start = _uint(data, pos)
        end = start + length
        if end > len(data):
            raise InvalidPayload(
                f"malformed update: string of {length} bytes, {len(data) - start} left"
            )
        try:
            text = data[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPayload("update string is not valid UTF-8") from None
        if text.isascii():
            return len(text), end
        return len(text) + sum(1 for c in text if ord(c) > 0xFFFF), end
    if ref == _DELETED:
        return _uint(data, pos)
    if ref == _JSON:
        count, pos = _count(data, pos, "JSON values")
        for _ in range(count):
            pos = _skip_bytes(data, pos)
        return count, pos
    if ref == _BINARY or ref == _EMBED:
        return 1, _skip_bytes(data, pos)
    if ref == _FORMAT:
        return 1, _skip_bytes(data, _skip_bytes(data, pos))
    if ref == _TYPE:
        type_ref, pos = _uint(data, pos)
        if type_ref == _XML_ELEMENT or type_ref == _XML_HOOK:
            pos = _skip_bytes(data, pos)
        return 1, pos
    if ref == _ANY:
        count, pos = _count(data, pos, "values")
        for _ in range(count):
            pos = _skip_any(data, pos, 0)
        return count, pos
    if ref == _DOC:
        return 1, _skip_any(data, _skip_bytes(data, pos), 0)  # guid, options
    raise InvalidPayload(f"update has unknown content type {ref}")


def _skip_any(data: bytes, pos: int, depth: int) -> int:
    """Skip one lib0 ``writeAny`` value (type byte 127 - kind), bounded in depth."""
    tag = data[pos]
    pos += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # integer: signed varint, sign in bit 6 of the first byte
        for _ in range(_MAX_VARINT_BYTES + 2):
            pos += 1
            if data[pos - 1] < 0x80:
                return pos
        raise InvalidPayload("malformed update: signed varint too long")
    if tag == 124:  # float32
        pos += 4
    elif tag == 123 or tag == 122:  # float64, bigint
        pos += 8
    elif tag == 119 or tag == 116:  # string, Uint8Array
        return _skip_bytes(data, pos)
    elif tag == 118 or tag == 117:  # object, array
        if depth >= MAX_ANY_DEPTH:
            raise InvalidPayload(f"update value nests deeper than {MAX_ANY_DEPTH}")
        count, pos = _count(data, pos, "entries")
        for _ in range(count):
            if tag == 118:
                pos = _skip_bytes(data, pos)  # key
            pos = _skip_any(data, pos, depth + 1)
        return pos
    else:
        raise InvalidPayload(f"update value of unknown type {tag}")
    if pos > len(data):
        raise InvalidPayload("malformed update: truncated number")
    return pos


def _check_delete_set(data: bytes, pos: int) -> None:
    clients, pos = _count(data, pos, "delete set clients", 2)
    for _ in range(clients):
        pos = _skip_uint(data, pos)  # client id
        ranges, pos = _count(data, pos, "deleted ranges", 2)
        for _ in range(ranges):
            start, pos = _uint(data, pos)
            length, pos = _uint(data, pos)
            if start + length > MAX_CLOCK:
                _clock_error(start + length, "deleted range end")


def decode_awareness_update(payload: bytes) -> tuple[AwarenessEntry, ...]:
    """Decode a y-protocols awareness update; every state must be JSON.

    Raises:
        ProtocolError: malformed update.
        InvalidPayload: a state that is not JSON, nests deeper than
            :data:`inputs.MAX_JSON_DEPTH` or holds a lone surrogate.
    """
    reader = Reader(payload)
    count = reader.var_uint()
    # Each entry takes at least 3 bytes; refuse absurd counts before looping.
    if count * 3 > reader.remaining:
        raise ProtocolError(f"awareness update claims {count} entries in {reader.remaining} bytes")
    entries = []
    for _ in range(count):
        client_id = reader.var_uint()
        clock = reader.var_uint()
        state = reader.var_string()
        try:
            parse_json(state, max_bytes=len(payload), what="awareness state")
        except InputError as exc:
            raise InvalidPayload(
                f"awareness state of client {client_id} is not JSON: {exc.detail}"
            ) from None
        entries.append(AwarenessEntry(client_id, clock, state))
    reader.end()
    return tuple(entries)


def decode_state_vector(encoded: bytes) -> dict[int, int]:
    """A Yjs state vector (varuint count, then client/clock pairs) as ``{client: clock}``.

    Compare state vectors decoded: the encoding lists clients in no fixed order.

    Raises:
        ProtocolError: truncated, overlong, or trailing bytes.
    """
    reader = Reader(encoded)
    count = reader.var_uint()
    if count * 2 > reader.remaining:
        raise ProtocolError(f"state vector claims {count} clients in {reader.remaining} bytes")
    pairs = [(reader.var_uint(), reader.var_uint()) for _ in range(count)]
    reader.end()
    return dict(pairs)


def encode_message(message: Message) -> bytes:
    """Inverse of :func:`decode_message`."""
    match message:
        case SyncStep1(state_vector):
            return encode_sync_step1(state_vector)
        case SyncStep2(update):
            return encode_sync_step2(update)
        case SyncUpdate(update):
            return encode_sync_update(update)
        case AwarenessUpdate(entries):
            return encode_awareness_update(entries)
        case Auth(sub_type, reason):
            return encode_auth(sub_type, reason)
        case QueryAwareness():
            return encode_query_awareness()
        case _:
            assert_never(message)
