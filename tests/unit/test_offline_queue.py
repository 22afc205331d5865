"""crdt_sync.client.offline_queue: the FrameClient's queue in memory and in SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from crdt_sync.client.offline_queue import (
    MemoryQueue,
    QueuedMutation,
    QueueFileError,
    SqliteQueue,
    open_queue,
)


def mutation(n: int, **kw) -> QueuedMutation:
    fields = {"title": f"t{n}", "done": n % 2 == 0, "tags": ["a", {"b": n}], "gone": None}
    return QueuedMutation(f"tx-{n}", "task", f"id/{n}", "u", kw.pop("p", fields), **kw)


@pytest.fixture(params=["memory", "sqlite"])
def queue(request, tmp_path: Path):
    q = MemoryQueue() if request.param == "memory" else SqliteQueue(tmp_path / "q.db")
    yield q
    q.close()


def test_items_come_out_in_the_order_they_were_queued(queue) -> None:
    for n in (5, 1, 9, 3):
        queue.append(mutation(n))
    assert [m.client_tx_id for m in queue.items()] == ["tx-5", "tx-1", "tx-9", "tx-3"]
    assert [m.client_tx_id for m in queue.head(2)] == ["tx-5", "tx-1"]
    queue.remove("tx-1")
    queue.remove("tx-unknown")  # answered twice: no error
    assert [m.client_tx_id for m in queue.items()] == ["tx-5", "tx-9", "tx-3"]
    queue.append(mutation(1))  # a new entry goes to the end
    assert [m.client_tx_id for m in queue.items()][-1] == "tx-1"
    assert len(queue) == 4


def test_a_client_tx_id_is_queued_once(queue) -> None:
    queue.append(mutation(1))
    with pytest.raises(ValueError, match="already queued"):
        queue.append(mutation(1))
    assert len(queue) == 1


def test_wire_form_is_a_mutations_entry() -> None:
    m = mutation(2, base_sid=17)
    assert m.wire() == {
        "t": "task",
        "id": "id/2",
        "op": "u",
        "p": m.p,
        "client_tx_id": "tx-2",
        "base_sid": 17,
    }
    assert "base_sid" not in mutation(3).wire()


def test_the_sqlite_queue_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite"
    q = open_queue(path)
    for n in range(20):
        q.append(mutation(n, base_sid=n if n % 3 else None))
    q.remove("tx-4")
    q.set_meta("client_id", "me")
    expected = q.items()
    q.close()

    again = open_queue(path)
    try:
        assert again.items() == expected  # same order, fields, base_sid (None kept)
        assert again.get_meta("client_id") == "me"
        again.remove("tx-0")
    finally:
        again.close()
    third = open_queue(path)
    try:
        assert [m.client_tx_id for m in third.items()] == [m.client_tx_id for m in expected[1:]]
    finally:
        third.close()


def test_open_queue_without_a_path_is_memory() -> None:
    q = open_queue(None)
    assert isinstance(q, MemoryQueue)
    q.append(mutation(1))
    assert q.items() == [mutation(1)]


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite"
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(QueueFileError, match="not an offline queue file"):
        open_queue(path)
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


def test_a_sqlite_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (x TEXT)")
    db.commit()
    db.close()
    with pytest.raises(QueueFileError, match="not an offline queue file of layout"):
        open_queue(path)


def test_a_corrupt_row_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite"
    q = open_queue(path)
    q.append(mutation(1))
    q.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO queue (client_tx_id, mutation) VALUES ('x', '{not json')")
    db.execute(
        "INSERT INTO queue (client_tx_id, mutation) VALUES ('y', ?)",
        (json.dumps({"client_tx_id": "y", "t": "task", "id": "a", "op": "zz", "p": {}}),),
    )
    db.commit()
    db.close()
    with pytest.raises(QueueFileError, match=r"queued row 2 is not a mutation"):
        open_queue(path)


def test_a_truncated_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite"
    q = open_queue(path)
    for n in range(200):
        q.append(mutation(n, p={"body": "x" * 500}))
    q.close()
    data = path.read_bytes()
    path.write_bytes(data[:4096] + b"\x00" * 100)  # the header survives, the pages do not
    with pytest.raises(QueueFileError):
        open_queue(path)
