"""The room bus across nodes on Redis pub/sub (see :mod:`rooms.broadcaster`).

* One channel per doc, ``{prefix}:doc:{org}:{name}`` (org and name percent-escaped,
  :func:`rooms.redis_wire.doc_channel`), subscribed on :meth:`RedisBroadcaster.join`
  and dropped on :meth:`~RedisBroadcaster.leave`; publishing goes through one queue
  and one connection, so a doc's messages leave in the order they were published.
* Messages are :func:`rooms.redis_wire.encode_room_message`: committed updates and
  awareness, nothing else. There is no way to publish a sync step 2 (a step 2 with a
  delete set, relayed to a replica that lacks the structs, wipes content there):
  stale replicas repair from the store (``RoomSink.remote_update`` sees the gap in
  ``prev_update_id``; ``RoomSink.bus_resumed`` after an outage).
* Own messages (``origin == node_id``) are dropped on arrival; so are messages that
  do not decode, or whose doc is not the channel's (counted in :attr:`malformed`).
* Lease: ``SET {prefix}:node:{node_id} <info> PX lease_ms``, renewed every
  ``renew_ms``. Every doc remembers the nodes it heard awareness from; each renewal
  also checks those nodes' lease keys, and a node whose key is gone is reported to
  every sink that heard from it (``RoomSink.node_gone``): after a ``kill -9`` its
  ghosts go within ``lease_ms`` + ``renew_ms``; after a clean :meth:`close`, which
  deletes the key, within ``renew_ms``.
* Outage: see :mod:`rooms.redis_link` (log once, jittered backoff, publishes dropped
  and counted; when back, every joined doc is subscribed again and its sink's
  ``bus_resumed`` called).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from redis.asyncio import Redis

from .broadcaster import RemoteAwareness, RemoteUpdate, RoomSink
from .redis_link import Backoff, LinkCounters, RedisLink
from .redis_wire import (
    WireError,
    decode_room_message,
    doc_channel,
    encode_room_message,
    lease_key,
)

log = logging.getLogger(__name__)

DocKey = tuple[str, str]


class RedisBroadcaster(LinkCounters):
    """Args:
    url: The Redis URL.
    node_id: This node's id (unique in the cluster; in every message and the lease).
    prefix: Of every channel and key (tests use a unique one).
    lease_ms: TTL of this node's lease key.
    renew_ms: How often the lease is renewed and the other nodes' leases checked.
    backoff: Reconnect delays (:class:`~rooms.redis_link.Backoff`).
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        prefix: str = "crdt-sync",
        lease_ms: int = 3000,
        renew_ms: int = 1000,
        backoff: Backoff | None = None,
        max_queue: int = 10_000,
    ) -> None:
        if not 0 < renew_ms < lease_ms:
            raise ValueError(f"need 0 < renew_ms < lease_ms, got {renew_ms}, {lease_ms}")
        self.node_id = node_id
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.renew_ms = renew_ms
        self._lease = lease_key(prefix, node_id)
        self._info = json.dumps(
            {"node": node_id, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
        ).encode()
        self._sinks: dict[DocKey, RoomSink] = {}
        self._by_channel: dict[bytes, DocKey] = {}
        #: For each joined doc, the nodes whose awareness it relayed.
        self._heard: dict[DocKey, set[str]] = {}
        self._link = RedisLink(
            url,
            name="broadcaster",
            on_message=self._on_message,
            on_connect=self._take_lease,
            on_resumed=self._resumed,
            heartbeat=self._renew_and_check,
            heartbeat_s=renew_ms / 1000,
            backoff=backoff,
            max_queue=max_queue,
        )
        #: Messages handed to sinks; own messages ignored; undecodable ones dropped.
        self.delivered = 0
        self.own = 0
        self.malformed = 0
        #: Nodes reported gone.
        self.nodes_gone = 0

    # -- Broadcaster -------------------------------------------------------------

    async def start(self) -> None:
        await self._link.start()

    async def close(self) -> None:
        """Stop; the lease is deleted so that the other nodes drop our ghosts at once."""
        await self._link.close(farewell=self._drop_lease)
        self._sinks.clear()
        self._by_channel.clear()
        self._heard.clear()

    async def join(self, org: str, name: str, sink: RoomSink) -> None:
        """Subscribe the doc's channel. While connected this waits (up to 2 s) until
        Redis confirms, so that whatever is published after it returns reaches
        ``sink``; while down it returns at once, and ``sink.bus_resumed()`` is called
        once the link is back and subscribed."""
        key = (org, name)
        channel = doc_channel(self.prefix, org, name)
        if key in self._sinks:
            log.warning("doc=%s/%s joined twice: the new sink replaces the old", org, name)
        self._sinks[key] = sink
        self._by_channel[channel] = key
        self._heard.setdefault(key, set())
        await self._link.subscribe(channel)

    async def leave(self, org: str, name: str) -> None:
        key = (org, name)
        if self._sinks.pop(key, None) is None:
            return
        channel = doc_channel(self.prefix, org, name)
        self._by_channel.pop(channel, None)
        self._heard.pop(key, None)
        await self._link.unsubscribe(channel)

    def publish_update(self, update: RemoteUpdate) -> None:
        """Queue a committed update (dropped and counted while down). ``origin`` must be
        this node (``ValueError`` otherwise: the others would file it under another
        node's lease)."""
        self._publish(update)

    def publish_awareness(self, awareness: RemoteAwareness) -> None:
        self._publish(awareness)

    def health(self) -> str | None:
        return self._link.health()

    # -- internals ---------------------------------------------------------------

    def _publish(self, message: RemoteUpdate | RemoteAwareness) -> None:
        if message.origin != self.node_id:
            raise ValueError(f"origin {message.origin!r} is not this node ({self.node_id!r})")
        channel = doc_channel(self.prefix, message.org, message.name)
        self._link.publish(channel, encode_room_message(message))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        key = self._by_channel.get(channel)
        if key is None:
            return  # left meanwhile
        try:
            message = decode_room_message(data)
        except WireError as exc:
            self._reject(channel, str(exc))
            return
        if message.origin == self.node_id:
            self.own += 1
            return
        if (message.org, message.name) != key:
            self._reject(channel, f"message of doc {message.org!r}/{message.name!r}")
            return
        sink = self._sinks[key]
        self.delivered += 1
        try:
            if isinstance(message, RemoteUpdate):
                sink.remote_update(message)
            else:
                self._heard[key].add(message.origin)
                sink.remote_awareness(message)
        except Exception:
            log.exception("doc=%s/%s: the room failed on a message from %s", *key, message.origin)

    def _reject(self, channel: bytes, why: str) -> None:
        self.malformed += 1
        # One line per message would let a noisy publisher flood the log.
        if self.malformed == 1 or self.malformed % 1000 == 0:
            log.warning(
                "channel=%r: dropped a message that is not ours (%s); %d so far",
                channel,
                why,
                self.malformed,
            )

    async def _take_lease(self, client: Redis) -> None:
        await client.set(self._lease, self._info, px=self.lease_ms)

    async def _drop_lease(self, client: Redis) -> None:
        await client.delete(self._lease)

    def _resumed(self) -> None:
        for key, sink in list(self._sinks.items()):
            try:
                sink.bus_resumed()
            except Exception:
                log.exception("doc=%s/%s: bus_resumed failed", *key)

    async def _renew_and_check(self, client: Redis) -> None:
        nodes = sorted({n for heard in self._heard.values() for n in heard})
        pipe = client.pipeline(transaction=False)
        pipe.set(self._lease, self._info, px=self.lease_ms)
        for node in nodes:
            pipe.exists(lease_key(self.prefix, node))
        replies = await pipe.execute()
        for node, alive in zip(nodes, replies[1:], strict=True):
            if not alive:
                self._gone(node)

    def _gone(self, node: str) -> None:
        self.nodes_gone += 1
        log.info("node=%s: lease gone, removing its awareness states", node)
        for key, heard in list(self._heard.items()):
            if node not in heard:
                continue
            heard.discard(node)
            sink = self._sinks.get(key)
            if sink is None:
                continue
            try:
                sink.node_gone(node)
            except Exception:
                log.exception("doc=%s/%s: node_gone(%s) failed", *key, node)
