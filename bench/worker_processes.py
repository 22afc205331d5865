"""Benchmark clients in child processes (spawned), driven over one pipe each.

A child answers ``("ready", count)`` once its clients are connected, then each command
the parent sends until ``("stop",)``. :class:`WorkerProcesses` is the parent's side:
start the children, wait for their answers (bounded), stop them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import anyio.to_thread


class WorkerProcesses:
    """One spawned process per entry of ``arg_lists``: ``target(*args, pipe)``.

    Args:
        target: A module-level function (spawn pickles it by name).
        arg_lists: The arguments of each process, before its end of the pipe.
        what: What a process is, for the error when one does not answer.
    """

    def __init__(
        self, target: Callable[..., None], arg_lists: Sequence[tuple[Any, ...]], what: str
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.what = what
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for args in arg_lists:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(*args, child), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def _recv(self, pipe: Connection, timeout: float) -> Any:
        if not await anyio.to_thread.run_sync(pipe.poll, timeout):
            raise TimeoutError(f"a {self.what} process did not answer")
        return pipe.recv()

    async def ready(self, timeout: float = 60) -> int:
        """How many clients the processes connected (each answers once)."""
        return sum([(await self._recv(p, timeout))[1] for p in self.pipes])

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
