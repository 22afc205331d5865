"""RedisLink pieces that need no server: the backoff, and a link with nothing to talk
to (publishes dropped and counted, health says why, close is prompt)."""

from __future__ import annotations

import random
import socket

import anyio
import pytest

from rooms.redis_link import Backoff, RedisLink

pytestmark = pytest.mark.anyio


def test_backoff_is_full_jitter_under_a_capped_exponential() -> None:
    backoff = Backoff(base=0.1, cap=2.0, rng=random.Random(7))
    for failures in range(1, 80):
        ceiling = min(2.0, 0.1 * 2**failures)
        delays = [backoff.delay(failures) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not a fixed step
        assert min(delays) < ceiling / 2


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once it is closed


async def test_a_link_without_a_server_drops_publishes_and_says_why() -> None:
    got: list[tuple[bytes, bytes]] = []
    link = RedisLink(
        f"redis://127.0.0.1:{closed_port()}/0",
        name="test",
        on_message=lambda channel, data: got.append((channel, data)),
        backoff=Backoff(base=0.01, cap=0.05),
    )
    await link.start(wait=0.2)
    reason = link.health()
    assert reason is not None and reason.startswith("redis test: ")
    assert link.publish(b"ch", b"x") is False
    await link.subscribe(b"ch")  # remembered for the session that never comes
    assert (link.published, link.dropped, link.reconnects) == (0, 1, 0)
    with anyio.fail_after(5):
        await link.close()
    assert link.health() == "redis test: closed"
    assert link.publish(b"ch", b"x") is False
    assert got == []
