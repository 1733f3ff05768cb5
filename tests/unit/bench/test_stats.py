"""The benchmark's arithmetic: round order, medians and within-round ratios."""

from __future__ import annotations

import math

import pytest

from offpath.bench.stats import difference_per, median, ratio, rotated

NAMES = ["off", "background", "background-sqs-slow", "background-sqs-down"]


class TestRotated:
    def test_every_variant_runs_once_per_round(self) -> None:
        """Each round is a permutation of the variants: every one runs, once."""
        for index in range(7):
            assert sorted(rotated(NAMES, index)) == sorted(NAMES)

    def test_each_variant_takes_every_position(self) -> None:
        """Over as many rounds as variants, each variant runs in every position
        once (so none is always first, right after the server of another)."""
        positions: dict[str, set[int]] = {name: set() for name in NAMES}
        for index in range(len(NAMES)):
            for position, name in enumerate(rotated(NAMES, index)):
                positions[name].add(position)
        assert all(seen == set(range(len(NAMES))) for seen in positions.values())

    def test_first_round_keeps_the_given_order(self) -> None:
        """Round 0 runs the variants as listed; round 1 starts with the second."""
        assert rotated(NAMES, 0) == NAMES
        assert rotated(NAMES, 1)[0] == NAMES[1]

    def test_empty(self) -> None:
        """No variants, no order."""
        assert rotated([], 3) == []


class TestMedian:
    def test_odd_and_even(self) -> None:
        """The middle value, or the mean of the two middle ones."""
        assert median([3.0, 1.0, 2.0]) == 2.0
        assert median([4.0, 1.0, 3.0, 2.0]) == 2.5

    def test_missing_values_are_ignored(self) -> None:
        """None and NaN (a round without the figure) do not count as values."""
        assert median([None, 5.0, math.nan, 1.0, 3.0]) == 3.0

    def test_nothing_present_is_none(self) -> None:
        """No value at all gives None, not a made-up number."""
        assert median([None, math.nan]) is None
        assert median([]) is None


class TestRatio:
    def test_ratio(self) -> None:
        """A variant's figure over the baseline's."""
        assert ratio(3.0, 2.0) == pytest.approx(1.5)

    def test_missing_or_zero_baseline_is_none(self) -> None:
        """Without both figures, or with a zero baseline, there is no ratio."""
        assert ratio(None, 2.0) is None
        assert ratio(1.0, None) is None
        assert ratio(1.0, 0.0) is None
        assert ratio(math.nan, 1.0) is None


class TestDifferencePer:
    def test_each_side_normalised_by_its_own_count(self) -> None:
        """Per-item cost over the baseline, when the two runs served different
        numbers of requests."""
        assert difference_per(1200.0, 100, 1000.0, 125) == pytest.approx(4.0)

    def test_missing_or_empty_is_none(self) -> None:
        """No figure, or a run that served nothing, gives no difference."""
        assert difference_per(None, 10, 1.0, 10) is None
        assert difference_per(1.0, 0, 1.0, 10) is None
