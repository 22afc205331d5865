"""Persistence: the store interface and its SQLite implementation."""

from persistence.sqlite import SQLiteStore
from persistence.store import (
    Appended,
    DocInfo,
    Frame,
    Store,
    StoreClosedError,
    StoredDoc,
    StoreError,
    StoreReadError,
    StoreWriteError,
)

__all__ = [
    "Appended",
    "DocInfo",
    "Frame",
    "SQLiteStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreReadError",
    "StoreWriteError",
    "StoredDoc",
]
