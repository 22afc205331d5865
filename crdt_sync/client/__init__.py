"""Client SDKs for crdt-sync.

* :class:`FrameClient` (:mod:`crdt_sync.client.frames`): a local pool of records kept
  current from the SyncFrame feed, with an offline queue of mutations.
* :class:`DocClient` (:mod:`crdt_sync.client.docs`): a ``Doc`` kept in sync across
  disconnects (backoff, resync, close codes, heartbeat, presence).
* :func:`connect` / :class:`YjsClient` (:mod:`crdt_sync.client.yjs`): one y-websocket
  session on a pycrdt ``Doc`` (no reconnect; the building block).
"""

from .docs import DocClient
from .frames import FrameClient
from .yjs import YjsClient, connect

__all__ = ["DocClient", "FrameClient", "YjsClient", "connect"]
