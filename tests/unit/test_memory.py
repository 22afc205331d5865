"""Freed memory of unloaded rooms goes back to the OS (glibc's malloc_trim)."""

from __future__ import annotations

import anyio
import pytest

import rooms.manager as manager_module
from persistence.sqlite import SQLiteStore
from rooms.manager import RoomManager, RoomSettings
from rooms.memory import release_freed_memory, trim_available

pytestmark = pytest.mark.anyio


def test_trim_is_available_on_glibc_and_harmless() -> None:
    assert trim_available()  # this project's machines run glibc
    assert release_freed_memory() in (True, False)


async def test_a_wave_of_unloads_trims_once(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(manager_module, "TRIM_DELAY", 0.05)
    monkeypatch.setattr(manager_module, "release_freed_memory", lambda: calls.append(1) or True)
    async with SQLiteStore(tmp_path / "db") as store:
        async with RoomManager(store, RoomSettings(idle_seconds=0.01)) as manager:
            for i in range(5):
                room = await manager.get_room("default", f"doc/{i}")
                manager.release(room)
            with anyio.fail_after(5):
                while manager.rooms or not calls:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)
    assert calls == [1], "five unloads in a row: one trim"
