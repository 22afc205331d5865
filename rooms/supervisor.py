"""Supervision of every long-running task of a node (DESIGN.md: never half-alive).

Two kinds of task:

* a **loop** (the frame flush loop, trimming, presence pushes, the liveness sweep)
  must run as long as the node does. :meth:`Supervisor.loop` runs it; when it raises,
  the failure is logged with the loop's name, counted, and the loop is started again
  after a backoff (doubling from :attr:`Supervisor.min_backoff` up to
  :attr:`Supervisor.max_backoff`, back to the minimum once it has run for
  :attr:`Supervisor.stable_seconds`). While it waits to restart it is not alive, and
  :meth:`Supervisor.problems` says so (``/healthz`` answers 503).
* a **task** of one room or record (a compaction, an unload timer, the start-up
  reconcile pass): :meth:`Supervisor.task` runs it once; a failure is logged with
  what it was working on and counted, and stays with that room or record: nothing
  else is stopped.

Counts are by kind (``crdt_sync_task_failures_total{task=...}``). Cancellation is
never a failure; a Rust panic from pycrdt (a ``BaseException``) is.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

log = logging.getLogger(__name__)

Factory = Callable[[], Awaitable[Any]]


@dataclass(slots=True)
class LoopState:
    """What the supervisor knows of one loop."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    finished: bool = False  # returned (a loop should not): not alive


def is_failure(exc: BaseException) -> bool:
    """An exception a task died of (not a cancellation, not an interpreter exit)."""
    if isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt | SystemExit):
        return False
    if isinstance(exc, BaseExceptionGroup):
        return any(is_failure(inner) for inner in exc.exceptions)
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


class Supervisor:
    """Runs loops and per-room tasks; see the module docstring.

    Args:
        min_backoff: Seconds before the first restart of a failed loop.
        max_backoff: Most seconds between restarts.
        stable_seconds: A loop that ran this long without failing restarts at once
            (after ``min_backoff``) the next time.
    """

    def __init__(
        self, *, min_backoff: float = 0.1, max_backoff: float = 10.0, stable_seconds: float = 30.0
    ) -> None:
        for value, what in ((min_backoff, "min_backoff"), (max_backoff, "max_backoff")):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{what} must be a finite number >= 0, got {value}")
        self.min_backoff = min_backoff
        self.max_backoff = max(min_backoff, max_backoff)
        self.stable_seconds = stable_seconds
        self.failures: Counter[str] = Counter()
        self.loops: dict[str, LoopState] = {}

    def problems(self) -> dict[str, str]:
        """Loops that are not running now, with why (empty: every loop is alive)."""
        found = {}
        for name, state in self.loops.items():
            if state.finished:
                found[name] = "stopped"
            elif not state.running:
                found[name] = f"restarting after: {state.last_error}"
        return found

    async def loop(self, name: str, factory: Factory) -> None:
        """Run ``factory()`` until cancelled, restarting it after each failure.

        Args:
            name: The loop's name (and its ``task`` label in metrics).
            factory: Starts one run of the loop; called again for every restart.
        """
        state = self.loops.setdefault(name, LoopState(name))
        backoff = self.min_backoff
        try:
            while True:
                started = time.monotonic()
                state.running = True
                try:
                    await factory()
                except BaseException as exc:
                    if not is_failure(exc):
                        raise
                    state.running = False
                    state.restarts += 1
                    state.last_error = _describe(exc)
                    self.failures[name] += 1
                    if time.monotonic() - started >= self.stable_seconds:
                        backoff = self.min_backoff
                    log.error(
                        "task %s failed (failure %d), restarting in %.2f s",
                        name,
                        self.failures[name],
                        backoff,
                        exc_info=exc,
                    )
                    await anyio.sleep(backoff)
                    backoff = min(self.max_backoff, max(backoff * 2, 0.01))
                    continue
                state.running = False
                state.finished = True
                log.error("task %s returned; a loop must run until the node stops", name)
                return
        finally:
            state.running = False

    async def task(self, kind: str, what: str, factory: Factory) -> bool:
        """Run ``factory()`` once; log and count a failure instead of raising it.

        Args:
            kind: The kind of task (its ``task`` label in metrics), e.g. ``"compact"``.
            what: What it works on (a room, a record), for the log line.

        Returns:
            ``True`` if it finished without failing.
        """
        try:
            await factory()
        except BaseException as exc:
            if not is_failure(exc):
                raise
            self.failures[kind] += 1
            log.error("%s failed (task=%s)", what, kind, exc_info=exc)
            return False
        return True

    def note_failure(
        self, kind: str, what: str, exc: BaseException, *, traceback: bool = True
    ) -> None:
        """A failure caught inside a loop that went on (one record's draft, one room's
        presence push): logged with ``what`` and counted like a task's.

        Args:
            traceback: Log the traceback (not for an expected error, such as a stored
                doc that cannot be loaded: its message says it all).
        """
        self.failures[kind] += 1
        if traceback:
            log.error("%s failed (task=%s)", what, kind, exc_info=exc)
        else:
            log.error("%s failed (task=%s): %s", what, kind, exc)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
