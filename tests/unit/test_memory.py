"""Freed memory of unloaded rooms goes back to the OS: the cycles they leave are
collected (within a budget of the loop's time), then glibc's malloc_trim runs."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator

import anyio
import pytest

import rooms.manager as manager_module
import rooms.memory as memory_module
from persistence.sqlite import SQLiteStore
from rooms.manager import RoomManager, RoomSettings
from rooms.memory import GC_SHARE, Reclaimer, release_freed_memory, trim_available

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
    assert manager.reclaimer.collections == 1, "and one collection"


async def test_the_trim_waits_for_the_end_of_the_wave(tmp_path, monkeypatch) -> None:
    trims: list[float] = []
    monkeypatch.setattr(manager_module, "TRIM_DELAY", 0.2)
    monkeypatch.setattr(
        manager_module, "release_freed_memory", lambda: trims.append(time.monotonic())
    )
    async with SQLiteStore(tmp_path / "db") as store:
        async with RoomManager(store, RoomSettings(idle_seconds=0.01)) as manager:
            with anyio.fail_after(10):
                for i in range(4):  # one unload every 0.1 s: a wave longer than the delay
                    manager.release(await manager.get_room("default", f"doc/{i}"))
                    while manager.rooms:
                        await anyio.sleep(0.005)
                    last_unload = time.monotonic()
                    await anyio.sleep(0.1)
                while not trims:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.3)
    assert len(trims) == 1 and trims[0] - last_unload >= 0.2


class Cycle:
    """Garbage only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_automatic_gc")
async def test_the_cycles_left_after_unloads_are_collected(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(manager_module, "TRIM_DELAY", 0.05)
    async with SQLiteStore(tmp_path / "db") as store:
        async with RoomManager(store, RoomSettings(idle_seconds=0.01)) as manager:
            room = await manager.get_room("default", "doc/1")
            left = Cycle()
            gone = weakref.ref(left)
            room.leftover = left  # type: ignore[attr-defined]
            del left
            manager.release(room)
            del room
            with anyio.fail_after(5):
                while gone() is not None:
                    await anyio.sleep(0.01)
            assert manager.reclaimer.collections == 1 and manager.reclaimer.collected >= 1


def test_collections_keep_to_their_share_of_the_time(monkeypatch) -> None:
    now = [100.0]
    perf = [0.0]

    def collect() -> int:
        perf[0] += 0.040  # a collection of 40 ms
        return 7

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return perf[0]

    monkeypatch.setattr(memory_module.gc, "collect", collect)
    monkeypatch.setattr(memory_module, "time", FakeTime)
    reclaimer = Reclaimer(clock=lambda: now[0])
    assert reclaimer.wait_seconds() == 0
    assert reclaimer.collect() == 7
    assert reclaimer.wait_seconds() == pytest.approx(0.040 / GC_SHARE)  # 4 s
    now[0] += 3
    assert reclaimer.wait_seconds() == pytest.approx(1.0)
    now[0] += 2
    assert reclaimer.wait_seconds() == 0
    assert (reclaimer.collections, reclaimer.collected) == (1, 7)
