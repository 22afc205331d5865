"""The SyncFrame wire: frames and events as the WebSocket, SSE and HTTP feeds send them.

A SyncFrame is ``{sid, t, id, op, p, who, at, ctx: {client_tx_id}}`` (DESIGN.md). The
:class:`~rooms.feed_hub.FeedHub` fans frames out without knowing this shape: each
subscriber is given its encoders by its endpoint (:mod:`crdt_sync.sync_stream`), and
subscribers with the same encoder share one encoding of each publish. Every encoder is
total: strict JSON (no NaN), UTF-8, and ASCII-escaped where a string has no UTF-8 form.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from persistence.store import Frame


def frame_dict(frame: Frame) -> dict[str, Any]:
    """The SyncFrame wire shape: ``{sid, t, id, op, p, who, at, ctx: {client_tx_id}}``."""
    ctx = frame.ctx if "client_tx_id" in frame.ctx else {"client_tx_id": None, **frame.ctx}
    return {
        "sid": frame.sid,
        "t": frame.t,
        "id": frame.id,
        "op": frame.op,
        "p": frame.p,
        "who": frame.who,
        "at": frame.at,
        "ctx": ctx,
    }


def dumps(value: Any, *, ascii: bool = False) -> str:
    """Strict JSON text (NaN and infinities raise ``ValueError``: they are not JSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii, allow_nan=False)


def _utf8(render: Callable[[bool], str]) -> bytes:
    """``render(ascii=False)`` as UTF-8; if a lone surrogate has no UTF-8 encoding, the
    JSON is rendered ASCII-escaped instead: still valid JSON and valid UTF-8. (The
    store holds no such string; this keeps every encoder total all the same.)"""
    try:
        return render(False).encode("utf-8")
    except UnicodeEncodeError:
        return render(True).encode("ascii")


def encode_json_array(frames: list[Frame]) -> bytes:
    """One WebSocket message: a JSON array of frames."""
    wire = [frame_dict(f) for f in frames]
    return _utf8(lambda ascii: dumps(wire, ascii=ascii))


def encode_json_event(event: dict[str, Any]) -> bytes:
    """One WebSocket message: a JSON object such as ``{"type": "presence", ...}``."""
    return _utf8(lambda ascii: dumps(event, ascii=ascii))


def encode_sse(frames: list[Frame]) -> bytes:
    """Server-Sent Events, one per frame, ``id:`` = sid (resumable with Last-Event-ID)."""
    wire = [(f.sid, frame_dict(f)) for f in frames]
    return _utf8(
        lambda ascii: "".join(f"id: {sid}\ndata: {dumps(d, ascii=ascii)}\n\n" for sid, d in wire)
    )


def encode_sse_event(event: dict[str, Any]) -> bytes:
    """A named Server-Sent Event (``event: presence``) without an id."""
    return _utf8(lambda ascii: f"event: {event['type']}\ndata: {dumps(event, ascii=ascii)}\n\n")
