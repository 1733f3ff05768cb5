"""Event-loop lag: how late the loop runs a timer it was asked to run.

A busy loop (a long callback, the GIL held by another thread, a busy core)
shows up as lag before it shows up in a request's latency tail, so the
services sample it all the time, cheaply: one timer every ``interval_s``
(100 ms by default: about ten wake-ups a second). The samples are kept in a
fixed-size ring, so memory does not grow with uptime; percentiles are
computed when asked (at shutdown, in the ``loop_lag`` log event).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

_RING = 65_536


@dataclass(frozen=True, slots=True)
class LagSummary:
    """Lag percentiles over the kept samples, in milliseconds."""

    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


class LoopLagMonitor:
    """Samples the running loop's lag until stopped."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._interval_s = interval_s
        self._samples: list[float] = []
        self._next = 0
        self._max_ns = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="offpath-loop-lag")

    async def stop(self) -> LagSummary:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.summary()

    def summary(self) -> LagSummary:
        ordered = sorted(self._samples)
        if not ordered:
            return LagSummary(0, 0.0, 0.0, 0.0)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1e6

        return LagSummary(len(ordered), rank(0.5), rank(0.99), self._max_ns / 1e6)

    async def _run(self) -> None:
        interval_ns = int(self._interval_s * 1e9)
        while True:
            expected = time.perf_counter_ns() + interval_ns
            await asyncio.sleep(self._interval_s)
            lag = max(0, time.perf_counter_ns() - expected)
            self._max_ns = max(self._max_ns, lag)
            if len(self._samples) < _RING:
                self._samples.append(lag)
            else:
                self._samples[self._next] = lag
                self._next = (self._next + 1) % _RING
