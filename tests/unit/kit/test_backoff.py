"""Unit tests for offpath.kit.backoff.Backoff: full-jitter exponential delays."""

from __future__ import annotations

import itertools
import random

import pytest

from offpath.kit.backoff import Backoff


class TestCeiling:
    def test_doubles_from_base_to_cap(self) -> None:
        """Attempt 1 may wait the base; each later attempt doubles it until the cap holds it."""
        backoff = Backoff(0.4, 5.0)
        ceilings = [backoff.ceiling(attempt) for attempt in range(1, 8)]
        assert ceilings == pytest.approx([0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])

    def test_cap_below_base_wins(self) -> None:
        """The cap bounds even the first attempt."""
        assert Backoff(2.0, 0.5).ceiling(1) == 0.5

    @pytest.mark.parametrize("attempt", [0, -1])
    def test_attempts_count_from_one(self, attempt: int) -> None:
        """An attempt below 1 is a caller's mistake and raises, for ceiling and delay alike."""
        backoff = Backoff(0.4, 5.0, rng=lambda: 0.5)
        with pytest.raises(ValueError, match=f"attempt is {attempt}"):
            backoff.ceiling(attempt)
        with pytest.raises(ValueError, match="count from 1"):
            backoff.delay(attempt)

    @pytest.mark.parametrize("attempt", [63, 64, 1_000, 10**9])
    def test_huge_attempts_do_not_overflow(self, attempt: int) -> None:
        """However many attempts, the ceiling is the cap, computed without overflow."""
        assert Backoff(0.4, 5.0).ceiling(attempt) == 5.0

    def test_huge_attempts_without_a_cap_stay_finite(self) -> None:
        """With an infinite cap the growth stops at a bounded shift, still a finite number."""
        ceiling = Backoff(0.4, float("inf")).ceiling(10**9)
        assert ceiling == 0.4 * 2**62


class TestDelay:
    def test_delay_is_the_random_fraction_of_the_ceiling(self) -> None:
        """Each delay is rng() times that attempt's ceiling (full jitter)."""
        fractions = itertools.cycle([0.25, 0.0, 0.5, 0.999])
        backoff = Backoff(0.4, 5.0, rng=lambda: next(fractions))
        delays = [backoff.delay(attempt) for attempt in range(1, 5)]
        assert delays == pytest.approx([0.25 * 0.4, 0.0, 0.5 * 1.6, 0.999 * 3.2])

    def test_default_rng_stays_below_the_ceiling(self) -> None:
        """With the default random source every delay lies in [0, ceiling)."""
        backoff = Backoff(0.4, 5.0)
        assert backoff.rng is random.random
        for attempt in range(1, 10):
            for _ in range(200):
                assert 0.0 <= backoff.delay(attempt) < backoff.ceiling(attempt)

    def test_equal_whatever_the_random_source(self) -> None:
        """Two backoffs with the same base and cap compare equal (rng is not compared)."""
        assert Backoff(0.4, 5.0, rng=lambda: 0.1) == Backoff(0.4, 5.0, rng=lambda: 0.9)
        assert Backoff(0.4, 5.0) != Backoff(0.4, 6.0)
