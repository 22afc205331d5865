"""The version retention policy (crdt_sync/version_retention.py): pure, clock injected."""

from __future__ import annotations

import random

from crdt_sync.version_retention import DAY_MS, HOUR_MS, RetentionPolicy, budget, to_drop
from persistence.store import VersionInfo

NOW = 400 * DAY_MS  # any fixed instant


def version(vid: int, created_at: int, size: int = 100, label: str | None = None) -> VersionInfo:
    return VersionInfo(vid, "doc", created_at, (), label, b"\x00", size)


def kept(versions: list[VersionInfo], **kwargs: object) -> list[int]:
    dropped = set(to_drop(versions, **kwargs))  # type: ignore[arg-type]
    return [v.version for v in versions if v.version not in dropped]


BIG = RetentionPolicy(min_budget_bytes=10**12)  # the byte budget out of the way


def test_everything_of_the_last_day_is_kept() -> None:
    vs = [version(i, NOW - i * 60_000) for i in range(1, 200)]  # one a minute, 3h
    assert kept(vs, now=NOW, current_size=100, policy=BIG) == [v.version for v in vs]


def test_one_per_hour_for_a_week_then_one_per_day() -> None:
    base = (NOW // DAY_MS) * DAY_MS
    vs = [
        # two days old: three in one hour, the newest of them stays
        version(1, base - 2 * DAY_MS + 5 * 60_000),
        version(2, base - 2 * DAY_MS + 10 * 60_000),
        version(3, base - 2 * DAY_MS + 50 * 60_000),
        version(4, base - 2 * DAY_MS + HOUR_MS + 1),  # the next hour: stays
        # twenty days old: two in one day, the newest stays
        version(5, base - 20 * DAY_MS + HOUR_MS),
        version(6, base - 20 * DAY_MS + 20 * HOUR_MS),
        version(7, base - 21 * DAY_MS),  # another day
        version(8, NOW - 1000),  # young
    ]
    assert sorted(kept(vs, now=NOW, current_size=100, policy=BIG)) == [3, 4, 6, 7, 8]


def test_labeled_versions_are_not_thinned() -> None:
    base = (NOW // DAY_MS) * DAY_MS
    vs = [
        version(1, base - 30 * DAY_MS + 1, label="release 1"),
        version(2, base - 30 * DAY_MS + 2),
        version(3, base - 30 * DAY_MS + 3),
        version(4, NOW),
    ]
    assert sorted(kept(vs, now=NOW, current_size=100, policy=BIG)) == [1, 3, 4]


def test_the_byte_budget_drops_the_oldest_unlabeled_first_then_labeled() -> None:
    policy = RetentionPolicy(max_bytes_ratio=3, min_budget_bytes=0)
    vs = [
        version(1, NOW - 5000, size=100, label="keep me"),
        version(2, NOW - 4000, size=100),
        version(3, NOW - 3000, size=100),
        version(4, NOW - 2000, size=100, label="and me"),
        version(5, NOW - 1000, size=100),
    ]
    # budget 300: two unlabeled go (2, 3)
    assert kept(vs, now=NOW, current_size=100, policy=policy) == [1, 4, 5]
    # budget 200: then the oldest labeled
    assert kept(vs, now=NOW, current_size=67, policy=policy) == [4, 5]
    # budget 0: the newest stays whatever
    assert kept(vs, now=NOW, current_size=0, policy=policy) == [5]


def test_the_budget_has_a_floor_so_an_emptied_doc_keeps_its_history() -> None:
    policy = RetentionPolicy(max_bytes_ratio=10, min_budget_bytes=1000)
    assert budget(policy, 0) == 1000
    assert budget(policy, 500) == 5000
    vs = [version(i, NOW - 1000 + i, size=100) for i in range(1, 11)]
    assert len(kept(vs, now=NOW, current_size=0, policy=policy)) == 10


def test_months_of_simulated_editing_stay_within_the_stated_bounds() -> None:
    """Thousands of versions over three simulated months (retention after each one, as
    the server runs it): count and bytes stay within what the policy promises."""
    rng = random.Random(15)
    policy = RetentionPolicy(
        keep_all_ms=DAY_MS, hourly_ms=7 * DAY_MS, max_bytes_ratio=20, min_budget_bytes=50_000
    )
    clock = 0
    size = 200
    stored: dict[int, VersionInfo] = {}
    made = 0
    labeled = 0
    start = clock
    for vid in range(1, 6001):
        clock += rng.randint(1, 45) * 60_000  # a version every 1-45 minutes
        size = max(50, size + rng.randint(-40, 60))  # the doc grows and shrinks
        label = None
        if rng.random() < 0.01:
            label = f"milestone {vid}"
            labeled += 1
        stored[vid] = version(vid, clock, size=size, label=label)
        made += 1
        for dropped in to_drop(list(stored.values()), now=clock, current_size=size, policy=policy):
            del stored[dropped]
        total = sum(v.size for v in stored.values())
        # bytes: within the budget (the newest alone may pass it)
        assert total <= max(budget(policy, size), size)
        # count: the last day's, one per hour of the week before, one per day before,
        # the labeled ones and the newest
        young = sum(1 for v in stored.values() if clock - v.created_at < policy.keep_all_ms)
        days = (clock - start) // DAY_MS + 2
        hours = (policy.hourly_ms - policy.keep_all_ms) // HOUR_MS + 2
        assert len(stored) <= young + hours + days + labeled + 1
        assert vid in stored  # the newest is never dropped
    assert made == 6000 and clock - start > 90 * DAY_MS
    assert len(stored) < 600  # thousands made, a bounded few hundred kept
