"""Run the real npm Yjs clients (``tests/interop/js/*.mjs``) against a crdt-sync server.

Each scenario script prints one JSON object per line on stdout (``{"event": ...}``)
and exits by itself (it has a hard timeout of its own); :class:`NodeScript` reads
those lines as they come, so a test can react to one (kill a client, start
another) while the script keeps running. Every wait here is bounded.

Node missing: the tests skip. ``tests/node_modules`` missing or stale: they fail,
because CI installs it (``npm ci --prefix tests``) and a skip would hide that.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent.parent
JS_DIR = Path(__file__).resolve().parent / "js"
NODE_MODULES = TESTS_DIR / "node_modules"
INSTALL_HINT = "run `npm ci --prefix tests` (Node.js >= 18) before the interop tests"


@pytest.fixture(scope="session")
def node_bin() -> str:
    """The ``node`` executable, with ``tests/node_modules`` matching ``tests/package.json``."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript interop tests need Node.js >= 18")
    pinned = json.loads((TESTS_DIR / "package.json").read_text())["dependencies"]
    problems = []
    for name, version in pinned.items():
        manifest = NODE_MODULES / name / "package.json"
        if not manifest.is_file():
            problems.append(f"{name} is not installed")
            continue
        installed = json.loads(manifest.read_text())["version"]
        if installed != version:
            problems.append(f"{name} is {installed}, tests/package.json pins {version}")
    if problems:
        pytest.fail(f"tests/node_modules is not usable ({'; '.join(problems)}): {INSTALL_HINT}")
    return node


def _payload(line: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in line.items() if key != "event"}


class NodeScript:
    """One running ``node tests/interop/js/<script>`` and the JSON lines it printed."""

    def __init__(self, node: str, script: str, args: list[str]) -> None:
        self.script = script
        self.proc = subprocess.Popen(
            [node, str(JS_DIR / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            cwd=JS_DIR,
        )
        self.events: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self, stream: Any) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                event = {"event": "<not a JSON object>", "line": line.rstrip("\n")}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        for line in stream:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _describe(self) -> str:
        return (
            f"{self.script} (exit code {self.proc.poll()}) printed:\n"
            + "\n".join(json.dumps(event, ensure_ascii=False) for event in self.events)
            + f"\nstderr:\n{self.stderr}"
        )

    def expect(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first line with ``"event": event`` (without that key); fails after
        ``timeout`` s or when the script ends without it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.events:
                    if line.get("event") == event:
                        return _payload(line)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._changed.wait(remaining)
        if self._eof:
            self._wait_exit(5)
            pytest.fail(f"{self.script} ended without printing {event!r}: {self._describe()}")
        pytest.fail(f"no {event!r} from {self.script} within {timeout} s: {self._describe()}")

    def send(self, command: str) -> None:
        """Write one command line to the script's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def _wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.script} still running after {timeout} s: {self._describe()}")

    def finish(self, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """Close stdin, wait for a zero exit; returns the last line of each event, by name."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        code = self._wait_exit(timeout)
        for thread in self._threads:
            thread.join(5)
        if code != 0:
            pytest.fail(f"{self.script} failed: {self._describe()}")
        return {line["event"]: _payload(line) for line in self.events}

    def kill(self) -> None:
        """SIGKILL: the client vanishes without closing anything itself."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def close(self) -> None:
        """Teardown: kill if still running and release the pipes."""
        if self.proc.poll() is None:
            self.kill()
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Node:
    """Starts scenario scripts: ``node.run("read.mjs", ws_url, room)``."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.started: list[NodeScript] = []

    def start(
        self, script: str, ws_url: str, room: str, params: dict[str, Any] | None = None
    ) -> NodeScript:
        """Start ``script WS_URL ROOM [PARAMS]`` and return at once."""
        args = [ws_url, room] + ([json.dumps(params)] if params is not None else [])
        proc = NodeScript(self.node, script, args)
        self.started.append(proc)
        return proc

    def run(
        self,
        script: str,
        ws_url: str,
        room: str,
        params: dict[str, Any] | None = None,
        timeout: float = 20.0,
    ) -> dict[str, dict[str, Any]]:
        """Run ``script`` to its (zero) exit; returns its lines by event name."""
        return self.start(script, ws_url, room, params).finish(timeout)

    def close(self) -> None:
        for proc in self.started:
            proc.close()


@pytest.fixture
def node(node_bin: str) -> Iterator[Node]:
    """Run the JS scenario scripts; kills whatever is still running at teardown."""
    runner = Node(node_bin)
    try:
        yield runner
    finally:
        runner.close()
