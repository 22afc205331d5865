"""SlidingWindowLimiter (strict, O(1) per key) and ConnectionLimiter."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.ratelimit import ConnectionLimiter, ConnectionLimitExceeded, SlidingWindowLimiter


def test_limit_trips_then_recovers_after_the_window() -> None:
    limiter = SlidingWindowLimiter(3, 10.0, buckets=10)
    assert [limiter.allow("a", 100.0)[0] for _ in range(3)] == [True, True, True]
    ok, retry = limiter.allow("a", 100.5)
    assert not ok and 10.0 <= retry <= 11.0
    assert limiter.refused == 1
    assert not limiter.allow("a", 100.5 + retry - 0.01)[0]
    assert limiter.allow("a", 100.5 + retry)[0]


def test_keys_are_independent() -> None:
    limiter = SlidingWindowLimiter(1, 1.0)
    assert limiter.allow("alice", 0.0)[0]
    assert not limiter.allow("alice", 0.1)[0]
    assert limiter.allow("bob", 0.1)[0]
    assert limiter.allow(("acme", "alice"), 0.1)[0]


def test_retry_after_points_at_the_first_moment_it_is_allowed_again() -> None:
    limiter = SlidingWindowLimiter(4, 4.0, buckets=4)
    for t in (0.0, 1.0, 2.0, 3.0):
        assert limiter.allow("k", t)[0]
    ok, retry = limiter.allow("k", 3.5)
    assert not ok
    # the event at 0.0 sits in bucket 0, counted until bucket 5 starts at 5.0
    assert retry == pytest.approx(1.5)
    assert not limiter.allow("k", 4.99)[0]
    assert limiter.allow("k", 5.0)[0]


def test_limit_zero_allows_nothing() -> None:
    limiter = SlidingWindowLimiter(0, 5.0)
    ok, retry = limiter.allow("k", 1.0)
    assert not ok and retry == 5.0


def test_idle_keys_expire_and_tracked_keys_are_capped() -> None:
    limiter = SlidingWindowLimiter(5, 1.0, buckets=10, max_keys=50)
    for i in range(200):
        limiter.allow(f"k{i}", 0.0)
    assert len(limiter) == 50
    for i in range(200):  # much later: every idle key goes as new ones come
        limiter.allow(f"late{i % 3}", 100.0 + i * 0.001)
    assert len(limiter) == 3


def test_a_step_back_of_the_clock_keeps_counting() -> None:
    limiter = SlidingWindowLimiter(2, 10.0)
    assert limiter.allow("k", 50.0)[0]
    assert limiter.allow("k", 40.0)[0]
    assert not limiter.allow("k", 45.0)[0]


def test_configuration_is_checked() -> None:
    for args in ((-1, 1.0), (1, 0.0)):
        with pytest.raises(ValueError):
            SlidingWindowLimiter(*args)
    with pytest.raises(ValueError):
        SlidingWindowLimiter(1, 1.0, buckets=0)


events = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 400)), min_size=1, max_size=300
)  # (key, gap in ms before it)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(0, 12),
    window_ms=st.integers(1, 1000),
    buckets=st.integers(1, 12),
    steps=events,
)
def test_never_more_than_limit_in_any_window(
    limit: int, window_ms: int, buckets: int, steps: list[tuple[int, int]]
) -> None:
    """The documented guarantee: at most ``limit`` allowed per key in any (t - W, t]."""
    limiter = SlidingWindowLimiter(limit, float(window_ms), buckets=buckets)
    now = 0
    allowed: dict[int, list[int]] = {}
    for key, gap in steps:
        now += gap
        ok, retry = limiter.allow(key, float(now))
        if ok:
            times = allowed.setdefault(key, [])
            times.append(now)
            inside = len(times) - bisect.bisect_right(times, now - window_ms)
            assert inside <= limit
        else:
            assert 0 < retry <= window_ms + window_ms / buckets + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 12),
    window_ms=st.integers(10, 1000),
    buckets=st.integers(1, 12),
    steps=events,
)
def test_refused_only_when_the_look_back_is_full(
    limit: int, window_ms: int, buckets: int, steps: list[tuple[int, int]]
) -> None:
    """The price bound: a refusal means ``limit`` events in the last W + W/buckets."""
    limiter = SlidingWindowLimiter(limit, float(window_ms), buckets=buckets)
    look_back = window_ms + window_ms / buckets
    now = 0
    allowed: dict[int, list[int]] = {}
    for key, gap in steps:
        now += gap
        ok, retry = limiter.allow(key, float(now))
        times = allowed.setdefault(key, [])
        if ok:
            times.append(now)
        else:
            recent = len(times) - bisect.bisect_right(times, now - look_back)
            assert recent >= limit
            # and retry_after is honest: at now + retry the key is admitted again
            probe = SlidingWindowLimiter(limit, float(window_ms), buckets=buckets)
            for t in times:
                probe.allow(key, float(t))
            assert probe.allow(key, now + retry)[0]


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.integers(0, 10_000), min_size=1, max_size=400),
    cap=st.integers(1, 64),
)
def test_memory_is_bounded_by_the_key_cap(keys: list[int], cap: int) -> None:
    limiter = SlidingWindowLimiter(3, 1.0, buckets=4, max_keys=cap)
    for i, key in enumerate(keys):
        limiter.allow(key, i * 0.0001)
        assert len(limiter) <= cap
        assert all(len(w.counts) == 5 for w in limiter._keys.values())


def test_connection_limits_per_actor_and_per_ip() -> None:
    limits = ConnectionLimiter(per_actor=2, per_ip=3)
    a1 = limits.acquire(("acme", "alice"), "10.0.0.1")
    a2 = limits.acquire(("acme", "alice"), "10.0.0.2")
    with pytest.raises(ConnectionLimitExceeded) as caught:
        limits.acquire(("acme", "alice"), "10.0.0.3")
    assert caught.value.kind == "actor"
    assert limits.open_for(ip="10.0.0.3") == 0, "a refused connection takes nothing"
    b1 = limits.acquire(("acme", "bob"), "10.0.0.1")
    limits.acquire(None, "10.0.0.1")  # open mode: IP only
    with pytest.raises(ConnectionLimitExceeded) as caught:
        limits.acquire(("globex", "carol"), "10.0.0.1")
    assert caught.value.kind == "ip"
    assert limits.open_for(actor=("globex", "carol")) == 0
    a1.release()
    a1.release()  # idempotent
    assert limits.open_for(actor=("acme", "alice")) == 1
    limits.acquire(("acme", "alice"), "10.0.0.4").release()
    with a2, b1:
        pass
    assert limits.open_for(actor=("acme", "alice")) == 0
    assert limits.open_for(ip="10.0.0.1") == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 3)), max_size=200))
def test_connection_counts_match_open_leases_and_entries_go_at_zero(
    ops: list[tuple[bool, int, int]],
) -> None:
    limits = ConnectionLimiter(per_actor=3, per_ip=4)
    leases = []
    for opening, actor, ip in ops:
        if opening:
            try:
                leases.append(limits.acquire(actor, f"ip{ip}"))
            except ConnectionLimitExceeded:
                pass
        elif leases:
            leases.pop(actor % len(leases)).release()
        for a in range(6):
            held = sum(1 for lease in leases if lease.actor == a)
            assert limits.open_for(actor=a) == held <= 3
        for i in range(4):
            held = sum(1 for lease in leases if lease.ip == f"ip{i}")
            assert limits.open_for(ip=f"ip{i}") == held <= 4
    for lease in leases:
        lease.release()
    assert limits.tracked == 0
