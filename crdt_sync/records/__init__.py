"""Records: record docs projected into fields and SyncFrames, and fields written back.

- :mod:`.projection`: doc state -> record JSON (pure), the value model;
- :mod:`.writes`: a mutation's fields -> a doc change (pure);
- :mod:`.wire`: SyncFrames and events on the WebSocket, SSE and HTTP wire.
"""
