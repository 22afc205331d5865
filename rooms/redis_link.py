"""One live link to Redis, kept up with backoff: shared by the room and frame buses.

A :class:`RedisLink` runs *sessions*. A session is a fresh client (for commands and
publishing) plus a pub/sub connection, subscribed to every channel the owner asked
for. It lasts until anything fails; then the link logs once (warning), marks itself
down (:meth:`RedisLink.health`), drops what was queued, and retries with capped
exponential backoff with full jitter (:class:`Backoff`). redis-py's own retries are
off: a hidden reconnect would resubscribe behind our back and hide the outage, and
the owners must know that messages may have been lost: ``on_resumed`` runs at the
start of every session (the first included) once Redis has confirmed every
subscription, so that a store read it starts misses nothing published after it.

* Publishes never wait: they are queued and sent in order, pipelined, by one task on
  one connection (order on a channel is the order of :meth:`publish`). While down,
  or when the queue is full, they are dropped and counted (:attr:`dropped`).
* Messages are handed to ``on_message(channel, data)`` on the event loop in arrival
  order; an exception there is logged and the reader goes on.
* ``heartbeat(client)`` runs every ``heartbeat_s`` (the broadcaster's lease); the
  link also pings its pub/sub connection then, and a connection that stays silent
  for three heartbeats is treated as lost (a peer that vanished without a FIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

OnMessage = Callable[[bytes, bytes], None]
SessionHook = Callable[[Redis], Awaitable[None]]

#: Errors that end a session (anything else is a bug and is logged with a traceback).
LINK_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class LinkLostError(RedisError):
    """The pub/sub connection stopped answering."""


class Backoff:
    """Capped exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))``
    for the ``n``-th consecutive failure (AWS Architecture Blog, "Exponential Backoff
    And Jitter")."""

    def __init__(self, base: float = 0.1, cap: float = 5.0, rng: random.Random | None = None):
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(failures, 62))
        return self._rng.uniform(0, ceiling)


class RedisLink:
    """Args:
    url: ``redis://...`` (anything ``Redis.from_url`` takes).
    name: For logs and :meth:`health` (``"broadcaster"``, ``"frame bus"``).
    on_message: Called with ``(channel, data)`` of every pub/sub message.
    on_connect: Awaited at the start of every session with its client (e.g. to take
        a lease), before it counts as connected.
    on_resumed: Called when a session is up, its subscriptions confirmed (every
        session, the first included; nothing may have been missed only on the first).
    heartbeat: Awaited every ``heartbeat_s`` while connected; raising ends the session.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_message: OnMessage,
        on_connect: SessionHook | None = None,
        on_resumed: Callable[[], None] | None = None,
        heartbeat: SessionHook | None = None,
        heartbeat_s: float = 1.0,
        backoff: Backoff | None = None,
        max_queue: int = 10_000,
        connect_timeout: float = 2.0,
        command_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.name = name
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_resumed = on_resumed
        self._heartbeat = heartbeat
        self._heartbeat_s = heartbeat_s
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(max_queue)
        self._channels: set[bytes] = set()
        self._acks: dict[bytes, list[asyncio.Future[None]]] = {}
        self._client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._down_reason: str | None = "not started"
        self._queue_full_logged = False
        self._last_heard = 0.0
        self._beat_lock = asyncio.Lock()
        #: Messages sent to Redis / dropped (down, queue full, or lost in a failure).
        self.published = 0
        self.dropped = 0
        #: Sessions started after the first one.
        self.reconnects = 0
        self._sessions = 0

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, wait: float = 2.0) -> None:
        """Start the link and wait up to ``wait`` s for the first session (if Redis is
        not there yet the link keeps trying in the background: the node still starts)."""
        if self._task is not None:
            raise RuntimeError(f"redis {self.name}: expected NEW, got STARTED")
        self._down_reason = "connecting"
        self._task = asyncio.create_task(self._run(), name=f"redis {self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), wait)

    async def close(self, farewell: SessionHook | None = None, wait: float = 1.0) -> None:
        """Send what is queued (up to ``wait`` s), run ``farewell`` if connected, stop."""
        if self._closing:
            return
        self._closing = True
        client = self._client
        if client is not None and self._connected.is_set():
            try:
                await asyncio.wait_for(self._goodbye(client, farewell), wait)
            except (TimeoutError, *LINK_ERRORS) as exc:
                log.info("redis %s: closing without a clean goodbye: %r", self.name, exc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._down_reason = "closed"

    async def _goodbye(self, client: Redis, farewell: SessionHook | None) -> None:
        await self._queue.join()
        # After the last heartbeat (none starts once closing): a lease renewal must not
        # land after the farewell that deletes the lease.
        async with self._beat_lock:
            if farewell is not None:
                await farewell(client)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def health(self) -> str | None:
        """``None`` while connected; else a short reason."""
        return None if self._connected.is_set() else f"redis {self.name}: {self._down_reason}"

    # -- subscriptions -----------------------------------------------------------

    async def subscribe(self, channel: bytes, wait: float = 2.0) -> None:
        """Listen on ``channel`` in this and every later session; if connected, wait
        (up to ``wait`` s) until Redis confirms, so that nothing published after this
        returns is missed."""
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None or not self._connected.is_set():
            return  # the next session subscribes it
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.setdefault(channel, []).append(ack)
        try:
            await pubsub.subscribe(channel)
            await asyncio.wait_for(ack, wait)
        except (TimeoutError, *LINK_ERRORS) as exc:
            # The reader notices a dead connection and starts a new session, which
            # subscribes again; the owner hears of it through on_resumed.
            log.debug("redis %s: subscribe %r not confirmed: %r", self.name, channel, exc)
        finally:
            waiting = self._acks.get(channel, [])
            if ack in waiting:
                waiting.remove(ack)
            if not waiting:
                self._acks.pop(channel, None)

    async def unsubscribe(self, channel: bytes) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is None or not self._connected.is_set():
            return
        try:
            await pubsub.unsubscribe(channel)
        except LINK_ERRORS as exc:  # the session ends; the next one does not subscribe it
            log.debug("redis %s: unsubscribe %r failed: %r", self.name, channel, exc)

    # -- publishing --------------------------------------------------------------

    def publish(self, channel: bytes, data: bytes) -> bool:
        """Queue ``data`` for ``channel``; ``False`` (and counted) if it was dropped."""
        if self._closing or not self._connected.is_set():
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait((channel, data))
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._queue_full_logged:
                self._queue_full_logged = True
                log.warning(
                    "redis %s: publish queue full (%d), dropping until it drains",
                    self.name,
                    self._queue.maxsize,
                )
            return False
        return True

    # -- sessions ----------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0  # consecutive failed attempts since the last session that ran
        while not self._closing:
            self._established = False
            try:
                await self._session()
            except asyncio.CancelledError:
                await self._teardown()
                raise
            except Exception as exc:
                await self._teardown()
                if self._established:
                    failures = 0
                reason = f"{exc.__class__.__name__}: {exc}"[:200]
                self._down_reason = f"down ({reason})"
                if failures == 0:  # once per outage
                    log.warning(
                        "redis %s: connection lost (%s); retrying with backoff",
                        self.name,
                        reason,
                        exc_info=not isinstance(exc, LINK_ERRORS),
                    )
                else:
                    log.debug("redis %s: attempt %d failed: %r", self.name, failures, exc)
                failures += 1
                await asyncio.sleep(self._backoff.delay(failures))

    _established = False

    async def _session(self) -> None:
        client = Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self._connect_timeout,
            socket_timeout=self._command_timeout,
        )
        self._client = client
        pubsub = client.pubsub()
        self._pubsub = pubsub
        await client.ping()
        await pubsub.connect()
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        subscribed: set[bytes] = set()
        await self._sync_subscriptions(pubsub, subscribed)
        if self._on_connect is not None:
            await self._on_connect(client)
        # Channels joined or left while on_connect ran; no await from here to set().
        await self._sync_subscriptions(pubsub, subscribed)
        first = self._sessions == 0
        self._sessions += 1
        if not first:
            self.reconnects += 1
            log.info("redis %s: connected again (reconnect %d)", self.name, self.reconnects)
        self._down_reason = None
        self._established = True
        self._connected.set()
        if self._on_resumed is not None:
            try:
                self._on_resumed()
            except Exception:
                log.exception("redis %s: on_resumed failed", self.name)
        tasks = [
            asyncio.create_task(self._read(pubsub)),
            asyncio.create_task(self._write(client)),
            asyncio.create_task(self._beat(client, pubsub)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
        raise LinkLostError("session task ended")  # pragma: no cover - loops never return

    async def _teardown(self) -> None:
        self._connected.clear()
        while not self._queue.empty():  # lost with the session: counted, never sent
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        for waiting in self._acks.values():
            for ack in waiting:
                if not ack.done():
                    ack.set_exception(LinkLostError("connection lost"))
        self._acks.clear()
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _sync_subscriptions(self, pubsub: PubSub, subscribed: set[bytes]) -> None:
        """Make the session's subscriptions those asked for, and wait until Redis has
        confirmed them (the reader does not run yet: messages are dispatched here)."""
        loop = asyncio.get_running_loop()
        while True:
            missing = self._channels - subscribed
            extra = subscribed - self._channels
            if extra:
                await pubsub.unsubscribe(*extra)
                subscribed -= extra
            if not missing:
                if not extra:
                    return
                continue
            await pubsub.subscribe(*missing)
            subscribed |= missing
            deadline = loop.time() + self._connect_timeout
            while missing:
                left = deadline - loop.time()
                if left <= 0:
                    raise LinkLostError(f"{len(missing)} subscriptions not confirmed")
                message = await pubsub.get_message(timeout=left)
                if message is not None:
                    self._dispatch(message)
                    if message["type"] == "subscribe":
                        missing.discard(message["channel"])

    def _dispatch(self, message: dict) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        kind = message["type"]
        if kind == "message":
            try:
                self._on_message(message["channel"], message["data"])
            except Exception:
                log.exception("redis %s: a message handler failed", self.name)
        elif kind == "subscribe":
            for ack in self._acks.pop(message["channel"], ()):
                if not ack.done():
                    ack.set_result(None)

    async def _read(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        silence_limit = 3 * self._heartbeat_s + self._connect_timeout
        while True:
            message = await pubsub.get_message(timeout=self._heartbeat_s)
            if message is not None:
                self._dispatch(message)
            elif loop.time() - self._last_heard > silence_limit:
                raise LinkLostError(f"no answer for {silence_limit:.0f} s")

    async def _write(self, client: Redis) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < 512 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            pipe = client.pipeline(transaction=False)
            for channel, data in batch:
                pipe.publish(channel, data)
            try:
                await pipe.execute()
            except BaseException:
                self.dropped += len(batch)
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()
            self.published += len(batch)
            if self._queue_full_logged and self._queue.empty():
                self._queue_full_logged = False

    async def _beat(self, client: Redis, pubsub: PubSub) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await pubsub.ping()  # answered through the reader (keeps _last_heard fresh)
            if self._heartbeat is not None:
                async with self._beat_lock:
                    if not self._closing:
                        await self._heartbeat(client)


class LinkCounters:
    """The counters of a bus's :class:`RedisLink` (``self._link``), for metrics."""

    _link: RedisLink

    @property
    def published(self) -> int:
        return self._link.published

    @property
    def dropped(self) -> int:
        return self._link.dropped

    @property
    def reconnects(self) -> int:
        return self._link.reconnects
