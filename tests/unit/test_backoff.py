"""crdt_sync.client.backoff.Backoff: capped exponential backoff with full jitter."""

from __future__ import annotations

import random

import pytest

from crdt_sync.client.backoff import Backoff


def test_each_delay_is_uniform_under_a_doubling_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(1))
    for n in range(6):
        ceiling = 0.5 * 2**n
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
    assert backoff.attempt == 6


def test_full_jitter_fills_the_whole_range() -> None:
    """Not "ceiling plus a little noise": the delays spread over [0, ceiling]."""
    rng = random.Random(7)
    delays = []
    for _ in range(2000):
        backoff = Backoff(base=1.0, cap=30.0, rng=rng)
        delays.append(backoff.next_delay())
    assert min(delays) < 0.05 and max(delays) > 0.95
    assert 0.45 < sum(delays) / len(delays) < 0.55
    assert len(set(delays)) == len(delays)


def test_the_ceiling_stops_at_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(200)]
    assert max(delays) <= 4.0
    assert max(delays[10:]) > 3.0  # past the cap the full range [0, cap] is used


def test_a_server_floor_is_honoured() -> None:
    backoff = Backoff(base=0.5, cap=1.0, rng=random.Random(5))
    assert all(backoff.next_delay(at_least=7.0) == 7.0 for _ in range(20))
    assert backoff.next_delay(at_least=0.0) <= 1.0


def test_attempts_reset_after_a_stable_connection() -> None:
    backoff = Backoff(base=0.5, cap=30.0, stable_after=0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.connected()
    backoff.disconnected()
    assert backoff.attempt == 0


def test_a_connection_dropped_at_once_keeps_backing_off() -> None:
    backoff = Backoff(base=0.5, cap=30.0, stable_after=3600.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.connected()
    backoff.disconnected()
    assert backoff.attempt == 5
    backoff.disconnected()  # without connected(): nothing changes
    assert backoff.attempt == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_backoffs_repeat(seed: int) -> None:
    a = Backoff(rng=random.Random(seed))
    b = Backoff(rng=random.Random(seed))
    assert [a.next_delay() for _ in range(8)] == [b.next_delay() for _ in range(8)]
