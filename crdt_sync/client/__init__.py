"""Client SDKs for crdt-sync.

* :func:`connect` / :class:`YjsClient` (:mod:`crdt_sync.client.yjs`): one y-websocket
  session on a pycrdt ``Doc`` (no reconnect; the building block).
"""

from .yjs import YjsClient, connect

__all__ = ["YjsClient", "connect"]
