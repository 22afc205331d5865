"""What a room puts on the wire: y-websocket message encoders (lib0 encoding).

Decoding untrusted frames is ``crdt_sync.codec``'s job; a room only ever encodes
messages from state it holds, so these functions never fail on valid input.
"""

from __future__ import annotations

from dataclasses import dataclass

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
