"""Which versions of a doc to keep: a pure policy, applied after each version is made.

The rule, in order (``now`` and every ``created_at`` in epoch milliseconds):

1. **Thinning by age.** A version younger than ``keep_all_ms`` (default one day) is
   kept. One younger than ``hourly_ms`` (default seven days) is kept if it is the
   newest of its hour (UTC hours: ``created_at // 3_600_000``). An older one is kept
   if it is the newest of its day (UTC days: ``created_at // 86_400_000``). Labeled
   versions and the newest version of the doc are always kept by this step.
2. **Byte budget.** The versions kept may hold at most
   ``max(max_bytes_ratio * current_size, min_budget_bytes)`` bytes together
   (``current_size``: the doc's encoded state now). While they hold more, the oldest
   *unlabeled* version is dropped; only when no unlabeled one is left (besides the
   newest) is the oldest labeled one dropped. The newest version is never dropped,
   so the bound is ``max(budget, size of the newest version)``.

So a label protects a version from thinning, not from the byte budget: the budget
is what keeps storage bounded whatever is labeled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from persistence.store import VersionInfo

__all__ = ["DAY_MS", "HOUR_MS", "RetentionPolicy", "budget", "to_drop"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The knobs of :func:`to_drop` (see the module docstring)."""

    keep_all_ms: int = DAY_MS
    hourly_ms: int = 7 * DAY_MS
    max_bytes_ratio: float = 20.0
    min_budget_bytes: int = 4 * 1024 * 1024


def budget(policy: RetentionPolicy, current_size: int) -> int:
    """Bytes the versions of a doc of ``current_size`` bytes may hold together."""
    return max(int(policy.max_bytes_ratio * current_size), policy.min_budget_bytes)


def to_drop(
    versions: Sequence[VersionInfo], *, now: int, current_size: int, policy: RetentionPolicy
) -> list[int]:
    """The ids of the versions to delete, oldest first.

    Args:
        versions: Every version of one doc (any order).
        now: The time of the decision.
        current_size: Bytes of the doc's current state.
        policy: The knobs.
    """
    if not versions:
        return []
    ordered = sorted(versions, key=lambda v: (v.created_at, v.version))
    newest = max(versions, key=lambda v: v.version).version
    newest_of_bucket: dict[tuple[str, int], int] = {}
    for v in ordered:
        bucket = _bucket(v, now, policy)
        if bucket is not None:
            newest_of_bucket[bucket] = v.version  # ordered by time: the last one wins
    kept: list[VersionInfo] = []
    for v in ordered:
        bucket = _bucket(v, now, policy)
        if v.version == newest or v.label is not None or bucket is None:
            kept.append(v)
        elif newest_of_bucket[bucket] == v.version:
            kept.append(v)
    total = sum(v.size for v in kept)
    limit = budget(policy, current_size)
    for labeled in (False, True):  # unlabeled ones go first
        for v in list(kept):
            if total <= limit:
                break
            if v.version == newest or (v.label is not None) != labeled:
                continue
            kept.remove(v)
            total -= v.size
    keep_ids = {v.version for v in kept}
    return [v.version for v in ordered if v.version not in keep_ids]


def _bucket(v: VersionInfo, now: int, policy: RetentionPolicy) -> tuple[str, int] | None:
    """``None``: young enough to keep whatever; else the bucket of which one is kept."""
    age = now - v.created_at
    if age < policy.keep_all_ms:
        return None
    if age < policy.hourly_ms:
        return ("hour", v.created_at // HOUR_MS)
    return ("day", v.created_at // DAY_MS)
