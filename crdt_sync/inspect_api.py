"""``GET /admin/inspect``: what the inspector page (``/inspect``) shows, as one JSON.

Admin-only (the front door admits only ``admin`` tokens to ``/admin/*``; with auth
off every client is one) and scoped to the admin's org: its loaded rooms on this
node (connections, awareness states, doc size), its newest frames, and node-wide
figures with no tenant in them (store commits, latency and queue; connections,
rooms, frame subscribers). Counters are totals since start: the page polls and draws
their rates. Cheap enough to poll every second: at most :data:`MAX_ROOMS` rooms
(most connections first) and :data:`MAX_FRAMES` frames, no scan of the store.

``?rooms=N&frames=N`` lower those limits.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistence.store import COMMIT_SECONDS_BUCKETS, StoreError, StoreStats
from rooms.room import Room, RoomState

from .auth.principal import principal_of
from .http_api import ApiError, routes
from .records.wire import frame_dict

#: Most rooms and frames one answer lists.
MAX_ROOMS = 100
MAX_FRAMES = 50


class InspectApi:
    """The handler of ``GET /admin/inspect``."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        return routes(self.runtime, [("GET", "/admin/inspect", self.inspect)])

    async def inspect(self, request: Request) -> Response:
        org = principal_of(request.scope).org
        max_rooms = _limit(request, "rooms", MAX_ROOMS)
        max_frames = _limit(request, "frames", MAX_FRAMES)
        runtime = self.runtime
        manager = runtime.manager
        mine = [r for r in manager.rooms.values() if r.org == org and r.state is RoomState.LOADED]
        mine.sort(key=lambda r: (-len(r.connections), r.name))
        try:
            _, newest = await runtime.store.frame_bounds(org)
            since = max(0, newest - max_frames)
            frames = (
                await runtime.store.frames_since(org, since, limit=max_frames) if max_frames else []
            )
        except StoreError as exc:
            raise ApiError(503, "store_unavailable", str(exc)) from None
        stats = runtime.store.stats()
        body = {
            "node": runtime.node_id,
            "at": int(time.time() * 1000),
            "org": org,
            "rooms": [_room(room) for room in mine[:max_rooms]],
            "rooms_total": len(mine),
            "frames": [frame_dict(frame) for frame in reversed(frames)],  # newest first
            "newest_sid": newest,
            "store": _store(stats, runtime.store.health()),
            "node_totals": {
                "connections": manager.connection_count,
                "rooms": len(manager.rooms),
                "frame_subscribers": len(runtime.hub),
            },
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _limit(request: Request, key: str, most: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return most
    if not raw.isdigit() or not 0 <= int(raw) <= most:
        raise ApiError(400, "invalid_request", f"{key}: an integer from 0 to {most}")
    return int(raw)


def _room(room: Room) -> dict[str, Any]:
    return {
        "name": room.name,
        "connections": len(room.connections),
        "awareness": len(room.awareness),
        # The doc as one update: what a new client is sent (not the log's bytes).
        "size": len(room.doc.get_update()),
    }


def _store(stats: StoreStats, problem: str | None) -> dict[str, Any]:
    return {
        "ok": problem is None,
        "problem": problem,
        "commits": stats.commits,
        "failed_batches": stats.failed_batches,
        "queued": stats.queued,
        "queued_bytes": stats.queued_bytes,
        "last_commit_ms": round(stats.last_commit_seconds * 1000, 3),
        "mean_commit_ms": (
            round(stats.commit_seconds_sum / stats.commits * 1000, 3) if stats.commits else None
        ),
        "p99_commit_ms": _quantile_bound(stats, 0.99),
        "last_batch_size": stats.last_batch_size,
        "commit_seconds_sum": stats.commit_seconds_sum,
    }


def _quantile_bound(stats: StoreStats, q: float) -> float | None:
    """The smallest histogram bound at or below which ``q`` of the commits fall (ms);
    ``None``: no commit yet, or past the largest bound."""
    if not stats.commits or not stats.commit_seconds_buckets:
        return None
    wanted = q * stats.commits
    for bound, count in zip(COMMIT_SECONDS_BUCKETS, stats.commit_seconds_buckets, strict=False):
        if count >= wanted:
            return bound * 1000
    return None
