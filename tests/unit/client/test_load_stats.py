"""The benchmark's statistics: nearest-rank percentiles and the log histogram."""

from __future__ import annotations

import math

from offpath.client.load import histogram, percentile


class TestPercentile:
    def test_nearest_rank(self) -> None:
        """p50 of 1..100 is 50, p99 is 99, p100 is 100 (nearest rank, no interpolation)."""
        values = list(range(1, 101))
        assert percentile(values, 50) == 50
        assert percentile(values, 99) == 99
        assert percentile(values, 100) == 100

    def test_small_samples_take_the_worst_for_high_percentiles(self) -> None:
        """With ten samples p99 is the largest one, not an average of neighbours."""
        assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000], 99) == 1000

    def test_empty_is_nan(self) -> None:
        """No samples give NaN rather than a made-up number."""
        assert math.isnan(percentile([], 50))


class TestHistogram:
    def test_counts_every_value_once(self) -> None:
        """Every latency lands in exactly one bucket whose bound is at least the value."""
        values_ns = [int(ms * 1e6) for ms in (0.01, 0.5, 0.51, 2.0, 2.0, 7.5, 120.0)]
        buckets = histogram(values_ns)
        assert sum(count for _, count in buckets) == len(values_ns)
        bounds = [bound for bound, _ in buckets]
        assert bounds == sorted(bounds)
        assert bounds[-1] >= 120.0

    def test_empty(self) -> None:
        """No samples, no buckets."""
        assert histogram([]) == []
