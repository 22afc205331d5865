"""Records: record docs projected into fields and SyncFrames, and fields written back.

- :mod:`.projection`: doc state -> record JSON (pure), the value model;
- :mod:`.writes`: a mutation's fields -> a doc change (pure).
"""
