"""``--workers N``: N server processes on one port, each a node of the cluster.

The parent reserves the port (a socket with ``SO_REUSEPORT``, bound but not listening:
``--port 0`` picks one, and the ready line names it), then starts N workers with the
``spawn`` context (never fork: the parent may hold threads and locks). Each worker binds
its own listening socket on that port with ``SO_REUSEPORT`` — on Linux the kernel
spreads new connections evenly over them, where one shared accept socket lets whichever
process wakes first take most — and runs the normal server on it, with its own store
pool, Redis connections, node id and lease. Workers talk over the same buses as nodes
on different machines, so what holds between nodes holds between workers: one order
per doc, nothing lost, awareness removed when a worker goes away.

The parent prints one ready line once every worker is up; forwards SIGINT/SIGTERM as
SIGTERM (each worker closes its WebSockets with 1001 and stores its rooms), kills what
is left after ``--shutdown-timeout`` + 5 s, and SIGKILLs at once on a second signal. A
worker takes a repeated SIGTERM as the same stop (systemd signals every process of a
service, and the parent forwards one more), never as "stop now". A
worker that dies on its own is restarted with a backoff while the others serve. A worker
that fails before it was ever ready stops them all: at startup the cause (store or Redis
unreachable, port taken) would be the same for every worker and every retry.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from .settings import Settings, worker_node_id

log = logging.getLogger(__name__)

#: Seconds before a dead worker is started again: doubles per quick death, up to the max.
RESTART_BACKOFF = 1.0
RESTART_BACKOFF_MAX = 30.0
#: A worker up this long has its backoff reset when it dies.
STABLE_SECONDS = 60.0
#: With ``--node-id`` a restarted worker reuses its id: past the Redis lease (3 s).
SAME_ID_RESTART_DELAY = 5.0
#: Seconds the workers have to be ready at startup.
STARTUP_TIMEOUT = 120.0
#: Beyond ``--shutdown-timeout``: what a worker may take to store its rooms and exit.
STOP_MARGIN = 5.0

_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    pipe: Connection | None = None
    ready: bool = False
    ever_ready: bool = False
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF
    restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None


def run_workers(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGINT/SIGTERM;
    return the exit code (0: every worker stopped cleanly)."""
    from .server import bind_socket, url_of

    if not hasattr(socket, "SO_REUSEPORT"):
        log.error("--workers needs SO_REUSEPORT (Linux, macOS, BSD); run one process here")
        return 1
    try:
        reserved = bind_socket(settings.host, settings.port, reuse_port=True, listen=False)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
        return 1
    with reserved:
        return Supervisor(settings, url_of(reserved), reserved.getsockname()[1]).run()


class Supervisor:
    """The parent of the workers: starts, watches, restarts and stops them."""

    def __init__(self, settings: Settings, url: str, port: int) -> None:
        self.settings = settings
        self.url = url
        self.port = port
        self.workers = [_Worker(i) for i in range(1, settings.workers + 1)]
        self._context = multiprocessing.get_context("spawn")
        self._signals = 0
        self._loop_name = "-"

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_w.fileno())
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for worker in self.workers:
                self._start(worker)
            if not self._started(wake_r):
                # Stopped by a signal before everyone was up: a clean stop all the same.
                return self._stop(wake_r, startup_failed=not self._signals)
            from .server import ready_line

            line = ready_line(self.url, self.settings, self._loop_name, len(self.workers))
            print(line, flush=True)
            self._supervise(wake_r)
            return self._stop(wake_r)
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            name = signal.Signals(signum).name
            log.info("received %s: stopping %d workers", name, len(self.workers))

    def _started(self, wake_r: socket.socket) -> bool:
        """Wait until every worker is ready; ``False`` if one failed first or time ran out."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(w.ready for w in self.workers):
            if self._signals:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = [w.index for w in self.workers if not w.ready]
                log.error("workers %s not ready within %.0f s: stopping", waiting, STARTUP_TIMEOUT)
                return False
            for worker in self._wait(wake_r, left):
                if not worker.alive and not worker.ever_ready:
                    log.error(
                        "worker %d failed at startup (%s): stopping the others",
                        worker.index,
                        _exit_text(worker),
                    )
                    return False
        return True

    def _supervise(self, wake_r: socket.socket) -> None:
        """Restart workers that die, until a signal."""
        while not self._signals:
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.restart_at = None
                    self._start(worker)
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = max(0.05, min(due) - now) if due else None
            for worker in self._wait(wake_r, timeout):
                if not worker.alive and worker.restart_at is None and not self._signals:
                    self._schedule_restart(worker)

    def _wait(self, wake_r: socket.socket, timeout: float | None) -> list[_Worker]:
        """Block until a worker says something or exits, or a signal; the workers concerned."""
        by_object: dict[Any, _Worker] = {}
        for worker in self.workers:
            if worker.process is not None and worker.process.exitcode is None:
                by_object[worker.process.sentinel] = worker
            if worker.pipe is not None:
                by_object[worker.pipe] = worker
        touched: list[_Worker] = []
        for ready in wait([wake_r, *by_object], timeout):
            if ready is wake_r:
                with contextlib.suppress(OSError):
                    wake_r.recv(4096)
                continue
            worker = by_object[ready]
            if ready is worker.pipe:
                self._read_pipe(worker)
            else:
                worker.process.join(0)  # type: ignore[union-attr]  # reap: exitcode is set
                worker.ready = False
            if worker not in touched:
                touched.append(worker)
        return touched

    def _read_pipe(self, worker: _Worker) -> None:
        assert worker.pipe is not None
        try:
            kind, detail = worker.pipe.recv()
        except (EOFError, OSError):  # the worker is gone: its sentinel says how
            worker.pipe.close()
            worker.pipe = None
            return
        if kind == "ready":
            worker.ready = True
            self._loop_name = str(detail)
            if worker.ever_ready:
                log.info("worker %d (pid %s) ready again", worker.index, worker.process.pid)  # type: ignore[union-attr]
            worker.ever_ready = True

    # -- one worker ----------------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        parent_end, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, worker.index, self.port, child_end),
            name=f"crdt-sync-worker-{worker.index}",
        )
        process.start()
        child_end.close()
        if worker.pipe is not None:
            worker.pipe.close()
        worker.process, worker.pipe = process, parent_end
        worker.ready = False
        worker.started_at = time.monotonic()
        log.debug("worker %d started (pid %s)", worker.index, process.pid)

    def _schedule_restart(self, worker: _Worker) -> None:
        now = time.monotonic()
        if now - worker.started_at >= STABLE_SECONDS:
            worker.backoff = RESTART_BACKOFF
        delay = worker.backoff
        worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF_MAX)
        if self.settings.node_id:
            # The new worker takes the same node id: let the dead one's lease lapse first,
            # so that the other nodes remove its clients' awareness (the new one would
            # otherwise renew the lease and those cursors would stay forever).
            delay = max(delay, SAME_ID_RESTART_DELAY)
        worker.restart_at = now + delay
        log.error(
            "worker %d (pid %s) exited (%s) after %.0f s; restarting it in %.0f s",
            worker.index,
            worker.process.pid if worker.process else "-",
            _exit_text(worker),
            now - worker.started_at,
            delay,
        )

    # -- stopping ------------------------------------------------------------------------

    def _stop(self, wake_r: socket.socket, *, startup_failed: bool = False) -> int:
        running = [w for w in self.workers if w.alive]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGTERM)  # type: ignore[union-attr, arg-type]
        deadline = time.monotonic() + self.settings.shutdown_timeout + STOP_MARGIN
        killed = False
        while any(w.alive for w in running):
            left = deadline - time.monotonic()
            if left <= 0 or (self._signals >= 2 and not killed):
                why = "a second signal" if self._signals >= 2 else "the stop timeout"
                for worker in running:
                    if worker.alive:
                        log.warning("worker %d: killed after %s", worker.index, why)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(worker.process.pid, signal.SIGKILL)  # type: ignore[union-attr, arg-type]
                killed = True
                left = 5.0
                deadline = time.monotonic() + left
            self._wait(wake_r, max(0.05, left))
        for worker in running:
            worker.process.join(1)  # type: ignore[union-attr]
        if startup_failed:  # the cause is logged; workers still starting die by SIGTERM
            return 1
        failed = [w for w in running if w.process.exitcode != 0]  # type: ignore[union-attr]
        for worker in failed:
            log.error("worker %d did not stop cleanly (%s)", worker.index, _exit_text(worker))
        # Every worker: those already gone when the stop began count too (a service
        # manager that signals the whole group reaches them first; they exit on it).
        log.info("stopped %d workers", len(self.workers))
        return 1 if failed else 0


def _exit_text(worker: _Worker) -> str:
    code = worker.process.exitcode if worker.process is not None else None
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- in the worker ---------------------------------------------------------------------------


def worker_main(settings: Settings, index: int, port: int, pipe: Connection) -> None:
    """A worker process: one node of the cluster, serving on its own ``SO_REUSEPORT``
    socket; tells the parent when it is ready; exits with the server's exit code."""
    from .cli import configure_logging
    from .server import bind_socket, run

    # Its own process group: a Ctrl-C in the terminal reaches the parent only, which
    # forwards one SIGTERM (two signals would make a worker stop without storing).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent()
    configure_logging(settings.log_level, tag=f"w{index}")
    own = replace(
        settings,
        port=port,
        workers=1,
        node_id=worker_node_id(settings.node_id, index) if settings.node_id else "",
    )
    try:
        sock = bind_socket(settings.host, port, reuse_port=True)
    except OSError as exc:
        log.error("worker %d cannot listen on %s:%s: %s", index, settings.host, port, exc.strerror)
        sys.exit(1)

    def ready(loop: str) -> None:
        with contextlib.suppress(OSError):
            pipe.send(("ready", loop))

    code = run(own, sock=sock, on_ready=ready)
    pipe.close()
    sys.exit(code)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (even by SIGKILL), so no worker is left
    serving with nobody to stop it. Elsewhere nothing: workers then outlive a killed
    parent until they are stopped."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
