"""Records: record docs projected into fields and SyncFrames, and fields written back.

- :mod:`.projection`: doc state -> record JSON (pure), the value model;
- :mod:`.writes`: a mutation's fields -> a doc change (pure);
- :mod:`.coalescer`: edits -> frame drafts queued in the store (owns *when a record
  is framed*);
- :mod:`.publisher`: committed frames -> the frame bus (owns *in queue order, once*);
- :mod:`.retention`: the frame log kept near ``--frame-retention``;
- :mod:`.wire`: SyncFrames and events on the WebSocket, SSE and HTTP wire.

The mutation engine (:mod:`crdt_sync.mutations`) drafts its frames through the
coalescer; :mod:`crdt_sync.record_feed` wires them for one node.
"""
