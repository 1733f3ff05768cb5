"""Full-jitter exponential backoff, the one used wherever offpath retries.

Attempt ``n`` (1-based) waits a uniformly random time in
``[0, min(cap, base * 2**(n-1)))``: retries spread out instead of arriving in
step ("Exponential Backoff And Jitter", AWS Architecture Blog; botocore's
``standard`` mode does the same one level down).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for successive attempts; ``rng`` is injectable for tests."""

    base_s: float
    cap_s: float
    rng: Callable[[], float] = field(default=random.random, compare=False)

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` (1-based) may wait."""
        if attempt < 1:
            raise ValueError(f"attempt is {attempt}; attempts count from 1")
        # The shift is bounded: 2**attempt grows without bound, the cap does not.
        return min(self.cap_s, self.base_s * (1 << min(attempt - 1, 62)))

    def delay(self, attempt: int) -> float:
        """A random delay in [0, ceiling(attempt))."""
        return self.rng() * self.ceiling(attempt)
