"""Client SDKs for crdt-sync.

* :func:`connect` / :class:`YjsClient` (:mod:`crdt_sync.client.yjs`): one y-websocket
  session on a pycrdt ``Doc`` (no reconnect; the building block).
* :class:`DocClient` (:mod:`crdt_sync.client.docs`): a ``Doc`` kept in sync across
  disconnects (backoff, resync, close codes, heartbeat, presence).
"""

from .docs import DocClient
from .yjs import YjsClient, connect

__all__ = ["YjsClient", "connect"]
__all__ += ["DocClient"]
