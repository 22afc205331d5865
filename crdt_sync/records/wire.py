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
    """The SyncFrame wire shape: ``{sid, t, id, op, p, who, at, ctx: {client_tx_id}}``,
    and ``tx`` on the frames of a mutation request (they share it: see :func:`tx_runs`).
    """
    ctx = frame.ctx if "client_tx_id" in frame.ctx else {"client_tx_id": None, **frame.ctx}
    wire = {
        "sid": frame.sid,
        "t": frame.t,
        "id": frame.id,
        "op": frame.op,
        "p": frame.p,
        "who": frame.who,
        "at": frame.at,
        "ctx": ctx,
    }
    if "tx" in ctx:
        ctx = dict(ctx)
        wire["tx"] = ctx.pop("tx")
        wire["ctx"] = ctx
    return wire


def tx_of(frame: Frame) -> str | None:
    """The ``tx`` id of the mutation request that made ``frame``, if any."""
    tx = frame.ctx.get("tx")
    return tx if isinstance(tx, str) else None


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
    """Server-Sent Events, ``id:`` = sid (resumable with Last-Event-ID): one per frame,
    but the frames of one mutation request (from its first to its last, see
    :func:`tx_runs`) in one ``event: tx`` with data ``{"tx", "frames": [...]}`` and
    the id of its last frame."""
    events: list[tuple[int, str | None, Any]] = []
    for run, tx in tx_runs(frames):
        if tx is None:
            events.extend((f.sid, None, frame_dict(f)) for f in run)
        else:
            events.append((run[-1].sid, tx, {"tx": tx, "frames": [frame_dict(f) for f in run]}))

    def render(ascii: bool) -> str:
        return "".join(
            f"id: {sid}\ndata: {dumps(d, ascii=ascii)}\n\n"
            if tx is None
            else f"id: {sid}\nevent: tx\ndata: {dumps(d, ascii=ascii)}\n\n"
            for sid, tx, d in events
        )

    return _utf8(render)


def tx_runs(frames: list[Frame]) -> list[tuple[list[Frame], str | None]]:
    """``frames`` cut into runs: from the first to the last frame of one mutation
    request with several frames (what lies between, a pending edit framed inside its
    commit, goes with it), and single frames (``None``)."""
    last: dict[str, int] = {}
    for i, frame in enumerate(frames):
        tx = tx_of(frame)
        if tx is not None:
            last[tx] = i
    runs: list[tuple[list[Frame], str | None]] = []
    i = 0
    while i < len(frames):
        tx = tx_of(frames[i])
        end = last.get(tx, i) if tx is not None else i
        if end > i:
            runs.append((frames[i : end + 1], tx))
        else:
            runs.append(([frames[i]], None))
        i = end + 1
    return runs


def encode_sse_event(event: dict[str, Any]) -> bytes:
    """A named Server-Sent Event (``event: presence``) without an id."""
    return _utf8(lambda ascii: f"event: {event['type']}\ndata: {dumps(event, ascii=ascii)}\n\n")
