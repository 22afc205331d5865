"""A TCP relay to a server (PostgreSQL) on a fixed local port, which a test can cut
and restore: the server as seen through a network that drops.

:meth:`TcpRelay.stop` closes the listening port and resets every relayed connection
(no clean goodbye); :meth:`TcpRelay.start` listens again on the same port, so a
client configured with the relay's address reconnects to it. :meth:`TcpRelay.hold`
stops relaying bytes (connections stay up: a server that has gone slow) until
:meth:`TcpRelay.release`. The relay runs on the
caller's asyncio event loop; every wait in it is bounded.
"""

from __future__ import annotations

import asyncio

import anyio

#: Longest :meth:`TcpRelay.stop` waits for its relayed connections to end.
STOP_TIMEOUT = 10.0


class TcpRelay:
    """Relays ``127.0.0.1:port`` to ``upstream_host:upstream_port``.

    Attributes:
        port: The local port (chosen by the first :meth:`start`, kept after).
        accepted: Connections accepted since the relay was made.
    """

    def __init__(self, upstream_port: int = 5432, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def hold(self) -> None:
        """Stop relaying bytes either way; connections stay open."""
        self._flowing.clear()

    def release(self) -> None:
        """Relay again what :meth:`hold` kept back, and what follows."""
        self._flowing.set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again) on :attr:`port`."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the port and reset every relayed connection."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        for transport in list(self._transports):
            transport.abort()  # a reset, not a clean goodbye
        with anyio.fail_after(STOP_TIMEOUT):
            while self._relays:
                await asyncio.wait(list(self._relays))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.accepted += 1
        self._relays.add(task)
        ends = [writer.transport]
        self._transports.add(writer.transport)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            ends.append(up_writer.transport)
            self._transports.add(up_writer.transport)
            await asyncio.gather(
                pipe(reader, up_writer, self._flowing), pipe(up_reader, writer, self._flowing)
            )
        finally:
            for transport in ends:
                transport.abort()
                self._transports.discard(transport)
            self._relays.discard(task)


async def pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    """Copy ``src`` to ``dst`` while ``flowing`` until either end goes; then reset ``dst``."""
    try:
        while data := await src.read(65536):
            await flowing.wait()
            dst.write(data)
            await dst.drain()
    except OSError:
        pass  # reset: the relay ends
    finally:
        dst.transport.abort()
