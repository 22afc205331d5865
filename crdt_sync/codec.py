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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import assert_never

from rooms.wire import (
    MAX_SAFE_INTEGER,
    AwarenessEntry,
    encode_auth,
    encode_awareness_update,
    encode_query_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_sync_update,
    write_var_bytes,
    write_var_uint,
)

from .inputs import InputError, parse_json

__all__ = [
    "AwarenessEntry",
    "InvalidPayload",
    "ProtocolError",
    "decode_message",
    "decode_state_vector",
    "encode_message",
    "write_var_bytes",
    "write_var_uint",
]

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
    return message


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
