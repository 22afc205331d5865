"""Several real ``crdt-sync serve`` nodes on one machine: the shared PostgreSQL and
Redis of this machine, a throwaway database and a Redis key prefix of their own.

Used by the integration and interop tests of several nodes (and the cluster
benchmark). Every node is a :class:`~tests.server_process.ServerProcess`: the real
console entry point, ready when it prints its ready line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.server_process import ServerProcess
from tests.store_backends import throwaway_database

__all__ = ["REDIS_URL", "Cluster", "PrivateRedis", "free_port", "throwaway_database"]

REDIS_URL = os.environ.get("CRDT_SYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of this test's own on a free port (outage tests stop this
    one, never the machine's shared instance)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"private redis-server on {self.port} not up within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Cluster:
    """``size`` nodes sharing one database and one Redis (prefix unique to the test).

    Attributes:
        nodes: The running nodes, ``nodes[i]`` has node id ``node-{i + 1}``.
    """

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *,
        size: int = 3,
        redis_url: str = REDIS_URL,
        args: tuple[str, ...] = (),
        node_args: dict[int, tuple[str, ...]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.redis_url = redis_url
        self.prefix = f"crdt-sync-test-{secrets.token_hex(4)}"
        self.args = args
        self.node_args = node_args or {}
        self.nodes: list[ServerProcess] = [self._node(i) for i in range(size)]

    def _node(self, index: int) -> ServerProcess:
        node_dir = self.workdir / f"node-{index + 1}"
        node_dir.mkdir(exist_ok=True)
        # A loaded CI machine (browsers and servers of other tests on 2 cores) has been
        # seen to take over the store's 5 s default to connect: the nodes of a test wait
        # longer, they are not what is tested.
        separator = "&" if "?" in self.database_url else "?"
        return ServerProcess(
            node_dir,
            "--database-url",
            f"{self.database_url}{separator}connect_timeout=20",
            "--redis-url",
            self.redis_url,
            "--redis-prefix",
            self.prefix,
            "--node-id",
            f"node-{index + 1}",
            *self.args,
            *self.node_args.get(index, ()),
        )

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def restart(self, index: int) -> ServerProcess:
        """Start node ``index`` again (after a kill or stop), same id, new port."""
        self.nodes[index] = self._node(index)
        return self.nodes[index].start()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(TimeoutError):
                    node.stop()
            elif node.proc is not None:
                with contextlib.suppress(Exception):
                    node._close_pipes()

    def logs(self) -> str:
        return "\n".join(
            f"--- node-{i + 1} ({n.log_path})\n{n.log()[-4000:]}" for i, n in enumerate(self.nodes)
        )

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
