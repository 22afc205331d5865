"""Pages of the frame log that never split a mutation request's frames.

The frames of one mutation request share a ``tx`` id and are committed together
(:meth:`~persistence.store.Store.atomic`), so they are next to each other in the log,
give or take the pending edits framed inside that commit. A page that ends inside
them is read on to the request's last frame: every transport delivers a request's
frames in one message (an HTTP page, a WebSocket message, an SSE event), so a client
applies them together.
"""

from __future__ import annotations

from dataclasses import dataclass

from persistence.store import Frame, Store

from .wire import tx_of


@dataclass(frozen=True, slots=True)
class Page:
    """A page of frames after ``since``.

    Attributes:
        frames: Oldest first; possibly more than the limit asked (a request's tail).
        oldest: The oldest retained sid - 1 when it was read.
        newest: The newest sid of the tenant when it was read.
        more: The limit was reached: frames after the page may exist.
    """

    frames: list[Frame]
    oldest: int
    newest: int
    more: bool


async def read_page(
    store: Store, org: str, since: int, *, limit: int, t: str | None, reach: int
) -> Page:
    """Frames of ``org`` after ``since`` (of type ``t``), at most ``limit`` unless the
    last one is a mutation request's that goes on: then up to the request's last frame
    among the next ``reach`` frames (a request has at most ``reach`` of them)."""
    page = await store.read_frames(org, since, limit=limit, t=t)
    frames = page.frames
    more = len(frames) >= limit
    tx = tx_of(frames[-1]) if more and frames else None
    if tx is not None:
        ahead = await store.read_frames(org, frames[-1].sid, limit=reach, t=t)
        end = max((i + 1 for i, f in enumerate(ahead.frames) if tx_of(f) == tx), default=0)
        frames = frames + ahead.frames[:end]
    return Page(frames, page.oldest, page.newest, more)


def tx_reach(max_mutations: int) -> int:
    """Most frames one mutation request commits: per mutation its own frame and a
    pending edit of its record framed first."""
    return 2 * max_mutations + 1
