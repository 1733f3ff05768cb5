"""The benchmark's arithmetic: round order, medians, ratios within a round.

Every comparison is made within one round (a variant against the baseline
measured minutes apart, in the same conditions), and a figure is the median
of those per-round values, so one disturbed round moves it little.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The order of one round: ``names`` rotated by ``round_index``, so over
    as many rounds as names each one runs once in every position (and first
    and last equally often, when the machine drifts during a round)."""
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values present; None when there are none."""
    present = [v for v in values if v is not None and v == v]  # not None, not NaN
    return statistics.median(present) if present else None


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``; None when either is missing or the baseline is 0."""
    if value is None or baseline is None or value != value or baseline != baseline:
        return None
    if baseline == 0:
        return None
    return value / baseline


def difference_per(
    value: float | None, value_count: int, baseline: float | None, baseline_count: int
) -> float | None:
    """``value / value_count - baseline / baseline_count``: what a variant
    costs per item over the baseline, each normalised by its own count."""
    if value is None or baseline is None or value_count <= 0 or baseline_count <= 0:
        return None
    return value / value_count - baseline / baseline_count
