"""crdt-sync: a Yjs-compatible collaboration server."""

__version__ = "0.1.0"
