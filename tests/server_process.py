"""Start a real ``crdt-sync serve`` process on a free port and stop it.

Used by the integration, interop and browser tests (and the benchmarks): the
server is the installed console script run as a child process, exactly as a user
runs it; readiness is its ready line on stdout, never a sleep.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = re.compile(r"crdt-sync ready on (http://\S+)")


class ServerProcess:
    """A running server. ``url`` is ``http://127.0.0.1:PORT``; ``ws_url`` its ``/yjs`` base."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        db: Path | None = None,
        env: dict | None = None,
        python: str | None = None,
    ):
        self.workdir = workdir
        self.python = python or sys.executable  # another one: a venv the test made
        self.db = db or workdir / "crdt-sync.db"
        self.args = list(args)
        self.env = env or {}
        self.log_path = workdir / f"server-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.ready_line = ""
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/yjs"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        cmd = [
            self.python,
            "-m",
            "crdt_sync",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(self.db),
            "--log-level",
            "debug",
            *self.args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=self.workdir,
            preexec_fn=self.preexec,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.proc.wait(5)
                self._close_pipes()  # nothing left open for the garbage collector
                raise RuntimeError(f"server exited before ready:\n{self.log()}")
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                self.ready_line = line
                return self
        self.stop(signal.SIGKILL)
        raise TimeoutError(f"server not ready within {timeout} s:\n{self.log()}")

    def preexec(self) -> None:
        """Runs in the child just before the server starts (override: resource limits)."""

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for exit; returns the exit code (kills on timeout)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self._close_pipes()
                raise TimeoutError(f"server did not exit within {timeout} s after {sig}") from None
        self._close_pipes()
        return self.proc.returncode

    def _close_pipes(self) -> None:
        self._pump_thread.join(5)
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()

    def kill(self) -> int:
        """``kill -9``: no flush, no goodbye."""
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except TimeoutError:
                pass
        elif self.proc is not None:
            self._close_pipes()
