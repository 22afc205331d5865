"""``crdt-sync tail``: print SyncFrames live, one JSON line per frame.

Built on :class:`~crdt_sync.client.frames.FrameClient` with ``load_records=False``
(no pool to load: it starts at the newest frame, or after ``since``), so it
reconnects with backoff and catches up after every reconnect: each frame is
printed once, in sid order, across server restarts. A ``since`` older than the
retained log is an error (printing from the newest frame instead would hide a gap).
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from .frames import FrameClient, FrameClientError


def frame_line(frame: dict[str, Any]) -> str:
    """One frame as the compact JSON line ``tail`` prints."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


async def tail(
    url: str,
    *,
    since: int | None,
    type: str | None,
    token: str | None,
    out: TextIO,
    **options: Any,
) -> None:
    """Print the frames of ``url``'s feed to ``out`` until cancelled.

    Args:
        url: The server, ``http://host:port``.
        since: Print the frames after this sid first (``None``: from now on).
        type: Only frames of this record type.
        token: Bearer token (``None`` when auth is off).
        out: Where the JSON lines go (flushed after every batch).
        options: More :class:`FrameClient` arguments (``backoff``, ``ping_interval``...).

    Raises:
        FrameClientError: the client stopped (4401 without a token that works, 4403,
            a bad ``type``, ``since`` no longer retained).
    """

    def write(frames: list[dict[str, Any]]) -> None:
        out.write("".join(frame_line(f) + "\n" for f in frames))
        out.flush()

    client = FrameClient(
        url,
        token=token,
        types=[type] if type else None,
        since=since,
        load_records=False,
        reload_on_reset=False,
        **options,
    )
    async with client:
        client.subscribe(write)
        why = await client.stopped()
    raise FrameClientError(why)
