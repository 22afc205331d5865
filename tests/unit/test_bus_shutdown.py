"""A node's shutdown is not held up by a Redis bus that does not close."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from crdt_sync import app as app_module
from crdt_sync.app import Runtime
from crdt_sync.settings import Settings

pytestmark = pytest.mark.anyio


class StuckBuses:
    """Buses whose close never returns (a client stuck in a call)."""

    async def close(self) -> None:
        await anyio.sleep_forever()


class FailingBuses:
    async def close(self) -> None:
        raise ConnectionError("gone")


async def test_buses_that_do_not_close_are_left_behind_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "BUS_CLOSE_TIMEOUT", 0.2)
    runtime = Runtime(Settings())
    started = time.monotonic()
    with caplog.at_level(logging.ERROR), anyio.fail_after(5):
        await runtime._close_buses(StuckBuses())  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    assert "did not close in" in caplog.text


async def test_a_bus_that_fails_to_close_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), anyio.fail_after(5):
        await Runtime(Settings())._close_buses(FailingBuses())  # type: ignore[arg-type]
    assert "closing the buses failed" in caplog.text
