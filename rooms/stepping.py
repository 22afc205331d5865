"""Running a coroutine in the caller's own step while it does not suspend.

The hot paths call async APIs that almost never wait (a socket write, a store append
with room in the writer queue). Awaiting one costs nothing extra, but what guards the
rare wait (a shield, a sender task) costs on every call. :func:`step` runs a
coroutine as far as it goes without suspending; only when it did suspend does the
caller pay for the guard, and :func:`finish` drives it on from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def step(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` up to its first suspension.

    Returns:
        ``(True, its result)`` if it finished, else ``(False, what it yielded)``: the
        future it waits for (``None`` for a bare yield), to hand to :func:`finish`.

    Raises:
        Whatever ``coro`` raised before suspending.
    """
    try:
        return False, coro.send(None)
    except StopIteration as stop:
        return True, stop.value


async def finish(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Drive a coroutine :func:`step` left suspended on ``waiting_on`` to its end, as
    asyncio's Task would; its result (or its exception)."""
    try:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # As the Task does for a future a coroutine yields: wait for it, then
                # resume the coroutine, which reads the outcome (and re-raises) itself.
                waiting_on._asyncio_future_blocking = False
                try:
                    await waiting_on
                except BaseException:
                    pass
            try:
                waiting_on = coro.send(None)
            except StopIteration as stop:
                return stop.value
    finally:
        coro.close()
