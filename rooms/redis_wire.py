"""What goes on the Redis channels: channel names and the two message encodings.

No I/O. Decoders read untrusted bytes (anyone with access to the Redis instance can
publish on our channels): they raise :class:`WireError` and nothing else, and the
caller drops and logs the message.

Room messages (:func:`encode_room_message` / :func:`decode_room_message`), binary::

    version:u8 (=1)  kind:u8 (1 update, 2 awareness)
    origin:str  org:str  name:str  update_id:svar  prev_update_id:svar  actor:str
    payload:bytes

``str`` and ``bytes`` are a varUint length then the bytes (strings UTF-8, lone
surrogates passed through so that every Python ``str`` round-trips); ``svar`` is a
zigzag varint (64-bit range). An awareness message has ``update_id = prev = 0`` and
an empty actor. Nothing else has a kind: a sync step 2 can never be carried.

Frame messages (:func:`encode_frames` / :func:`decode_frames`): strict JSON,
``{"v": 1, "origin": node, "org": org, "frames": [{sid, t, id, op, p, who, at, ctx}]}``.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any
from urllib.parse import quote

from persistence.store import Frame

from .broadcaster import RemoteAwareness, RemoteUpdate

VERSION = 1
KIND_UPDATE = 1
KIND_AWARENESS = 2

_MAX_VARINT_BYTES = 10  # 64 bits
_INT64 = 1 << 63


class WireError(ValueError):
    """Bytes that are not a message of ours (malformed, truncated, unknown version)."""


def _escape(part: str) -> str:
    # Injective and free of ':' so that the parts of a channel name cannot run together.
    return quote(part, safe="", errors="surrogatepass")


def doc_channel(prefix: str, org: str, name: str) -> bytes:
    """``{prefix}:doc:{org}:{name}`` with org and name percent-escaped."""
    return f"{prefix}:doc:{_escape(org)}:{_escape(name)}".encode()


def frames_channel(prefix: str) -> bytes:
    """One channel for every org's frames (the org is in the message)."""
    return f"{prefix}:frames".encode()


def lease_key(prefix: str, node_id: str) -> bytes:
    return f"{prefix}:node:{_escape(node_id)}".encode()


# -- room messages -----------------------------------------------------------------


def _put_uvar(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _put_svar(out: bytearray, value: int) -> None:
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"{value} is out of the 64-bit range")
    _put_uvar(out, (value << 1) ^ (value >> 63))


def _put_bytes(out: bytearray, data: bytes) -> None:
    _put_uvar(out, len(data))
    out += data


def _put_str(out: bytearray, text: str) -> None:
    _put_bytes(out, text.encode("utf-8", "surrogatepass"))


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise WireError("truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def uvar(self) -> int:
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise WireError("overlong varint")  # one encoding per value
                return value
            shift += 7
        raise WireError("varint too long")

    def svar(self) -> int:
        raw = self.uvar()
        if raw >= 1 << 64:
            raise WireError("varint out of range")
        return (raw >> 1) ^ -(raw & 1)

    def bytes_(self) -> bytes:
        size = self.uvar()
        end = self.pos + size
        if end > len(self.data):
            raise WireError("truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return bytes(chunk)

    def str_(self) -> str:
        try:
            return self.bytes_().decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise WireError("invalid UTF-8") from exc


def encode_room_message(message: RemoteUpdate | RemoteAwareness) -> bytes:
    out = bytearray((VERSION,))
    if isinstance(message, RemoteUpdate):
        out.append(KIND_UPDATE)
        update_id, prev, actor, payload = (
            message.update_id,
            message.prev_update_id,
            message.actor,
            message.update,
        )
    elif isinstance(message, RemoteAwareness):
        out.append(KIND_AWARENESS)
        update_id, prev, actor, payload = 0, 0, "", message.message
    else:  # pragma: no cover - typed callers
        raise TypeError(f"not a room message: {type(message).__name__}")
    _put_str(out, message.origin)
    _put_str(out, message.org)
    _put_str(out, message.name)
    _put_svar(out, update_id)
    _put_svar(out, prev)
    _put_str(out, actor)
    _put_bytes(out, payload)
    return bytes(out)


def decode_room_message(data: bytes) -> RemoteUpdate | RemoteAwareness:
    """Raises :class:`WireError` (only) if ``data`` is not a well-formed message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    reader = _Reader(bytes(data))
    version = reader.u8()
    if version != VERSION:
        raise WireError(f"unknown version {version}")
    kind = reader.u8()
    if kind not in (KIND_UPDATE, KIND_AWARENESS):
        raise WireError(f"unknown kind {kind}")
    origin = reader.str_()
    org = reader.str_()
    name = reader.str_()
    update_id = reader.svar()
    prev = reader.svar()
    actor = reader.str_()
    payload = reader.bytes_()
    if reader.pos != len(reader.data):
        raise WireError("trailing bytes")
    if kind == KIND_UPDATE:
        return RemoteUpdate(origin, org, name, update_id, prev, payload, actor)
    return RemoteAwareness(origin, org, name, payload)


# -- frame messages ----------------------------------------------------------------


def encode_frames(origin: str, org: str, frames: list[Frame]) -> bytes:
    body = {
        "v": VERSION,
        "origin": origin,
        "org": org,
        "frames": [
            {
                "sid": f.sid,
                "t": f.t,
                "id": f.id,
                "op": f.op,
                "p": f.p,
                "who": f.who,
                "at": f.at,
                "ctx": f.ctx,
            }
            for f in frames
        ],
    }
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)  # ASCII: total
    return text.encode("ascii")


def _reject_constant(name: str) -> Any:
    raise WireError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: JSON text, but no JSON value
        raise WireError("number out of range")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _frame(org: str, raw: Any) -> Frame:
    if not isinstance(raw, dict):
        raise WireError("frame is not an object")
    sid, t, id_, op, p, who, at, ctx = (
        raw.get(k) for k in ("sid", "t", "id", "op", "p", "who", "at", "ctx")
    )
    if not (_is_int(sid) and sid > 0 and _is_int(at)):
        raise WireError("frame sid/at must be integers (sid > 0)")
    if not (isinstance(t, str) and isinstance(id_, str) and isinstance(op, str)):
        raise WireError("frame t/id/op must be strings")
    if not (isinstance(p, dict) and isinstance(ctx, dict)):
        raise WireError("frame p/ctx must be objects")
    if who is not None and not isinstance(who, str):
        raise WireError("frame who must be a string or null")
    return Frame(sid=sid, org=org, t=t, id=id_, op=op, p=p, who=who, at=at, ctx=ctx)


def decode_frames(data: bytes) -> tuple[str, str, list[Frame]]:
    """``(origin, org, frames)`` in strictly increasing sid order; raises
    :class:`WireError` (only) if ``data`` is not such a message."""
    try:
        body = json.loads(bytes(data), parse_constant=_reject_constant, parse_float=_finite)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError included
        raise WireError(f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(body, dict) or not _is_int(body.get("v")) or body["v"] != VERSION:
        raise WireError("not a version-1 frame message")
    origin, org, raw_frames = body.get("origin"), body.get("org"), body.get("frames")
    if not (isinstance(origin, str) and isinstance(org, str) and isinstance(raw_frames, list)):
        raise WireError("origin/org/frames missing")
    frames = [_frame(org, raw) for raw in raw_frames]
    for a, b in itertools.pairwise(frames):
        if b.sid <= a.sid:
            raise WireError("frames not in sid order")
    for f in frames:  # json.loads accepts huge ints; Frame.at and sids are 64-bit
        if not (-_INT64 <= f.at < _INT64 and f.sid < _INT64):
            raise WireError("frame sid/at out of range")
    return origin, org, frames
