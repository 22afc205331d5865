"""ReadThrottle: per-client interval and per-tenant concurrency limits on catch-up reads."""

from __future__ import annotations

import pytest

from crdt_sync import throttle
from crdt_sync.throttle import ReadThrottle, Throttled

ORG = "default"


class FakeClock:
    """Stands in for the ``time`` module of crdt_sync.throttle: no wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(throttle, "time", fake)
    return fake


def remembered(limits: ReadThrottle) -> list[str]:
    """The clients whose last request is remembered, oldest first."""
    return [client for _, client in limits._last]


def admit(limits: ReadThrottle, client: str, org: str = ORG) -> None:
    with limits.request(org, client):
        pass


def test_second_request_within_the_interval_is_refused_with_retry_after() -> None:
    # Real clock, but an interval no test run can outlast.
    limits = ReadThrottle(10_000, 10)
    admit(limits, "a")
    with pytest.raises(Throttled) as info:
        admit(limits, "a")
    assert 9 < info.value.retry_after <= 10
    assert info.value.retry_after_header == "10"
    assert "10000 ms" in info.value.detail
    assert limits.refused == 1


def test_retry_after_header_is_whole_seconds_and_never_zero() -> None:
    assert Throttled(0.001, "x").retry_after_header == "1"
    assert Throttled(0.0, "x").retry_after_header == "1"
    assert Throttled(1.0, "x").retry_after_header == "1"
    assert Throttled(1.01, "x").retry_after_header == "2"
    assert str(Throttled(2.5, "why")) == "why"


def test_interval_with_a_controlled_clock(clock: FakeClock) -> None:
    limits = ReadThrottle(500, 10)
    admit(limits, "a")
    clock.now += 0.2
    with pytest.raises(Throttled) as info:
        admit(limits, "a")
    assert info.value.retry_after == pytest.approx(0.3)
    assert info.value.retry_after_header == "1"
    # A refused request does not restart the interval.
    clock.now += 0.3
    admit(limits, "a")
    clock.now += 0.499
    with pytest.raises(Throttled):
        admit(limits, "a")
    assert limits.refused == 2


def test_clients_and_tenants_are_independent() -> None:
    limits = ReadThrottle(10_000, 10)
    admit(limits, "a")
    admit(limits, "b")
    admit(limits, "a", org="acme")  # the same client name in another tenant
    for client, org in (("a", ORG), ("b", ORG), ("a", "acme")):
        with pytest.raises(Throttled):
            admit(limits, client, org)


def test_zero_interval_means_no_per_client_limit() -> None:
    limits = ReadThrottle(0, 10)
    for _ in range(100):
        admit(limits, "a")
    assert limits.refused == 0
    assert limits._last == {}  # nothing remembered when there is nothing to enforce


def test_concurrency_is_limited_per_tenant() -> None:
    limits = ReadThrottle(0, 2)
    with limits.request(ORG, "a"), limits.request(ORG, "b"):
        with pytest.raises(Throttled) as info:
            admit(limits, "c")
        assert "2 requests" in info.value.detail
        assert info.value.retry_after_header == "1"
        admit(limits, "c", org="acme")  # another tenant has its own budget
        with limits.request("acme", "d"), limits.request("acme", "e"):
            with pytest.raises(Throttled):
                admit(limits, "f", org="acme")
    # Both finished: there is room again.
    with limits.request(ORG, "c"), limits.request(ORG, "d"):
        pass
    assert limits._in_flight == {}


def test_refused_for_concurrency_does_not_start_the_client_interval() -> None:
    limits = ReadThrottle(10_000, 1)
    with limits.request(ORG, "a"):
        with pytest.raises(Throttled) as info:
            admit(limits, "b")
        assert info.value.retry_after == pytest.approx(10)
    admit(limits, "b")  # its refused request did not count as its last request


def test_slot_is_released_when_the_request_raises() -> None:
    limits = ReadThrottle(0, 1)
    with pytest.raises(RuntimeError, match="read failed"):
        with limits.request(ORG, "a"):
            raise RuntimeError("read failed")
    assert limits._in_flight == {}
    admit(limits, "b")


def test_slot_is_released_when_refused_inside() -> None:
    limits = ReadThrottle(10_000, 1)
    admit(limits, "a")
    with pytest.raises(Throttled):
        admit(limits, "a")
    assert limits._in_flight == {}
    admit(limits, "b")


def test_oldest_clients_are_forgotten_past_max_clients() -> None:
    limits = ReadThrottle(10_000, 10, max_clients=2)
    for client in ("a", "b", "c"):
        admit(limits, client)
    assert len(limits._last) == 2
    admit(limits, "a")  # forgotten: admitted although within its interval
    # Remembering "a" again forgot the next oldest, "b"; "c" is still remembered.
    with pytest.raises(Throttled):
        admit(limits, "c")
    admit(limits, "b")
    assert remembered(limits) == ["a", "b"]
    with pytest.raises(Throttled):
        admit(limits, "a")


def test_forgetting_drops_every_expired_entry_first(clock: FakeClock) -> None:
    limits = ReadThrottle(1000, 10, max_clients=3)
    for client in ("a", "b", "c"):
        admit(limits, client)
    clock.now += 5  # every entry expired
    admit(limits, "d")
    assert remembered(limits) == ["d"]
    # Over the bound with nothing expired, the oldest entry goes.
    admit(limits, "e")
    admit(limits, "f")
    clock.now += 0.5
    admit(limits, "g")
    assert remembered(limits) == ["e", "f", "g"]
    with pytest.raises(Throttled):
        admit(limits, "g")
