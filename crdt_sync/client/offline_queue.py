"""The offline queue of a :class:`~crdt_sync.client.frames.FrameClient`: mutations made
locally and not yet acknowledged by the server, in the order they were made.

Two kinds with one interface: :class:`MemoryQueue` (lost with the process) and
:class:`SqliteQueue` (a small local SQLite file, so a restarted client replays what
its previous run could not send). Every entry carries its ``client_tx_id``: the
server applies a mutation once per key and answers a replay with the first result,
so an entry sent, applied, and still queued when the process died is harmless.

The SQLite file also keeps the client's ``client_id`` (how the server tells this
client's writes from other writers of the same actor when it reports conflicts), so
a restarted client is the same writer. The file is written synchronously: each
operation is one small local transaction, shorter than any network round trip.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The layout version of a queue file (``PRAGMA user_version``).
SCHEMA_VERSION = 1

OPS = ("i", "u", "d")


class QueueFileError(Exception):
    """A queue file that cannot be used (not a SQLite file, another layout, bad rows)."""


@dataclass(frozen=True, slots=True)
class QueuedMutation:
    """One mutation waiting for the server's answer.

    Attributes:
        client_tx_id: The idempotency key sent with it.
        t: Record type.
        id: Record id.
        op: ``"i"`` insert, ``"u"`` update, ``"d"`` delete.
        p: The fields (``None`` removes a field; empty for a delete).
        base_sid: The sid the change was made on (the server reports fields other
            writers set since then as conflicts), ``None`` if unknown.
    """

    client_tx_id: str
    t: str
    id: str
    op: str
    p: dict[str, Any] = field(default_factory=dict)
    base_sid: int | None = None

    def wire(self) -> dict[str, Any]:
        """As an entry of ``POST /sync/v1/mutations``."""
        item: dict[str, Any] = {
            "t": self.t,
            "id": self.id,
            "op": self.op,
            "p": self.p,
            "client_tx_id": self.client_tx_id,
        }
        if self.base_sid is not None:
            item["base_sid"] = self.base_sid
        return item


class MemoryQueue:
    """The offline queue in memory."""

    path: Path | None = None

    def __init__(self) -> None:
        self._items: dict[str, QueuedMutation] = {}
        self._meta: dict[str, str] = {}

    def append(self, mutation: QueuedMutation) -> None:
        """Add ``mutation`` at the end (its ``client_tx_id`` must be new)."""
        if mutation.client_tx_id in self._items:
            raise ValueError(f"client_tx_id {mutation.client_tx_id!r} is already queued")
        self._items[mutation.client_tx_id] = mutation

    def items(self) -> list[QueuedMutation]:
        """Every queued mutation, oldest first."""
        return list(self._items.values())

    def head(self, limit: int) -> list[QueuedMutation]:
        """The ``limit`` oldest mutations."""
        out = []
        for mutation in self._items.values():
            if len(out) >= limit:
                break
            out.append(mutation)
        return out

    def remove(self, client_tx_id: str) -> None:
        """Drop an answered mutation (no error if it is not queued)."""
        self._items.pop(client_tx_id, None)

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Nothing to release."""


class SqliteQueue:
    """The offline queue in a local SQLite file (created if missing).

    Raises:
        QueueFileError: the file exists but is not a queue file of this layout, or
            holds a row that is not a mutation (nothing is changed in it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise QueueFileError(f"cannot open the offline queue {self.path}: {exc}") from None
        try:
            self._open()
            self._items = {m.client_tx_id: m for m in self._load()}
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0]
                for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables and version == 0:
                self._db.executescript(
                    f"""
                    BEGIN;
                    CREATE TABLE queue (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        client_tx_id TEXT NOT NULL UNIQUE,
                        mutation TEXT NOT NULL
                    );
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    PRAGMA user_version = {SCHEMA_VERSION};
                    COMMIT;
                    """
                )
                return
        except sqlite3.DatabaseError as exc:
            raise QueueFileError(
                f"{self.path} is not an offline queue file (SQLite says: {exc}); "
                "move it away or pass another queue_path"
            ) from None
        if version != SCHEMA_VERSION or not {"queue", "meta"} <= tables:
            raise QueueFileError(
                f"{self.path} is not an offline queue file of layout {SCHEMA_VERSION} "
                f"(user_version {version}, tables {sorted(tables)}); "
                "move it away or pass another queue_path"
            )

    def _load(self) -> list[QueuedMutation]:
        out = []
        try:
            rows = self._db.execute("SELECT seq, mutation FROM queue ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as exc:
            raise QueueFileError(f"cannot read the offline queue {self.path}: {exc}") from None
        for seq, text in rows:
            try:
                out.append(_decode(json.loads(text)))
            except (ValueError, TypeError, KeyError) as exc:
                raise QueueFileError(
                    f"{self.path}: queued row {seq} is not a mutation ({exc}); "
                    "move the file away or remove that row"
                ) from None
        return out

    def append(self, mutation: QueuedMutation) -> None:
        """Add ``mutation`` at the end, on disk before this returns."""
        if mutation.client_tx_id in self._items:
            raise ValueError(f"client_tx_id {mutation.client_tx_id!r} is already queued")
        text = json.dumps(_encode(mutation), ensure_ascii=False, separators=(",", ":"))
        self._write(
            "INSERT INTO queue (client_tx_id, mutation) VALUES (?, ?)",
            (mutation.client_tx_id, text),
        )
        self._items[mutation.client_tx_id] = mutation

    def items(self) -> list[QueuedMutation]:
        """Every queued mutation, oldest first."""
        return list(self._items.values())

    def head(self, limit: int) -> list[QueuedMutation]:
        """The ``limit`` oldest mutations."""
        return self.items()[:limit]

    def remove(self, client_tx_id: str) -> None:
        """Drop an answered mutation (no error if it is not queued)."""
        if self._items.pop(client_tx_id, None) is not None:
            self._write("DELETE FROM queue WHERE client_tx_id = ?", (client_tx_id,))

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise QueueFileError(f"cannot write the offline queue {self.path}: {exc}") from None

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Close the file (what is queued stays in it)."""
        self._db.close()


OfflineQueue = MemoryQueue | SqliteQueue


def open_queue(path: str | Path | None) -> OfflineQueue:
    """A queue in the SQLite file at ``path``, or in memory if ``path`` is ``None``.

    Raises:
        QueueFileError: see :class:`SqliteQueue`.
    """
    if path is None:
        return MemoryQueue()
    queue = SqliteQueue(path)
    if len(queue):
        log.info("offline queue %s: %d mutations to replay", queue.path, len(queue))
    return queue


def _encode(m: QueuedMutation) -> dict[str, Any]:
    return {
        "client_tx_id": m.client_tx_id,
        "t": m.t,
        "id": m.id,
        "op": m.op,
        "p": m.p,
        "base_sid": m.base_sid,
    }


def _decode(raw: Any) -> QueuedMutation:
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    strings = [raw[k] for k in ("client_tx_id", "t", "id", "op")]
    if not all(isinstance(s, str) and s for s in strings):
        raise ValueError("client_tx_id, t, id and op must be non-empty strings")
    if raw["op"] not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}")
    p, base_sid = raw.get("p", {}), raw.get("base_sid")
    if not isinstance(p, dict):
        raise ValueError("p must be an object")
    if base_sid is not None and (isinstance(base_sid, bool) or not isinstance(base_sid, int)):
        raise ValueError("base_sid must be an integer or null")
    return QueuedMutation(raw["client_tx_id"], raw["t"], raw["id"], raw["op"], p, base_sid)
