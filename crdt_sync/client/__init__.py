"""Client SDKs for crdt-sync.

* :func:`connect` / :class:`YjsClient` (:mod:`crdt_sync.client.yjs`): one y-websocket
  session on a pycrdt ``Doc`` (no reconnect; the building block).
* :class:`FrameClient` (:mod:`crdt_sync.client.frames`): a local pool of records kept
  current from the SyncFrame feed, with an offline queue of mutations.
"""

from .frames import FrameClient
from .yjs import YjsClient, connect

__all__ = ["YjsClient", "connect"]
__all__ += ["FrameClient"]
