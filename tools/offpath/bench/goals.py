"""The performance contract as benchmark cells: each goal, the figure that
tests it, and a verdict (met, missed, or why there is none). Beside them,
figures the benchmark measures that the contract sets no goal for (the gain
of multi-process serving): a value from the same rounds, with no verdict.

A round where the load generator fell behind its schedule, or where other
work ran on the serving core, says nothing about the server's tail: for the
goals that compare latencies or throughput such rounds are left out, and
counted. When every round was left out the verdict names the reason instead
of blaming (or acquitting) the server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from offpath.bench.stats import median

MET = "met"
MISSED = "missed"
NOT_AVAILABLE = "n/a"
# A figure without a goal that has a value.
MEASURED = "measured"

# Why a run is not evidence about the server (the verdict when every round is).
GENERATOR_LATE = "load generator late"
GENERATOR_SATURATED = "load generator saturated"
CORE_SHARED = "serving core shared"


@dataclass(frozen=True)
class Goal:
    """One line of the contract."""

    id: str
    title: str
    op: Literal["<=", ">="]
    threshold: float
    unit: str = ""  # "" for a ratio
    # Figures that compare latency or throughput exclude disturbed rounds;
    # CPU, request counts and freshness do not depend on the generator's timing.
    excludes_disturbed: bool = True
    # "median" of the per-round values, or "max" of them (a worst case).
    combine: Literal["median", "max"] = "median"

    def holds(self, value: float) -> bool:
        return value <= self.threshold if self.op == "<=" else value >= self.threshold

    def shortfall(self, value: float) -> float:
        """How far ``value`` is on the wrong side, as a share of the goal."""
        if self.op == "<=":
            return (value - self.threshold) / self.threshold
        return (self.threshold - value) / self.threshold

    def text(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {_number(self.threshold)}{self.unit}"


GOALS = {
    g.id: g
    for g in (
        Goal("p99", "Query p99, analytics on ÷ off", "<=", 1.05),
        Goal("p99_sqs_slow", "Query p99 ÷ off, SQS +100 ms", "<=", 1.05),
        Goal("p99_sqs_down", "Query p99 ÷ off, SQS unreachable", "<=", 1.05),
        Goal("p999", "Query p99.9, analytics on ÷ off", "<=", 1.5),
        Goal("p99_at_max", "Query p99 ÷ off at 80 % of max QPS", "<=", 1.10),
        Goal("max_qps", "Max QPS, analytics on ÷ off", ">=", 0.97),
        Goal(
            "cpu_per_event",
            "Serving-core CPU per event, on over off",
            "<=",
            5.0,
            " µs",
            excludes_disturbed=False,
        ),
        Goal(
            "burst",
            "Longest analytics burst on the serving core",
            "<=",
            0.5,
            " ms",
            excludes_disturbed=False,
            # "No single burst": the worst round, not a typical one.
            combine="max",
        ),
        Goal("loop_lag", "Event-loop lag p99, flushing ÷ off", "<=", 1.2),
        Goal(
            "sqs_per_1000",
            "SQS requests per 1,000 events",
            "<=",
            5.0,
            excludes_disturbed=False,
        ),
        Goal(
            "freshness",
            "Reply → readable (GetEvent) p99",
            "<=",
            2.0,
            " s",
            excludes_disturbed=False,
        ),
    )
}


@dataclass(frozen=True)
class RoundValue:
    """One round's figure for a cell, and what disturbed it (if anything)."""

    value: float | None
    disturbed: str | None = None


class _Rounds:
    """Per-round values and which of them count: shared by cells and figures."""

    rounds: list[RoundValue]

    @property
    def _excludes_disturbed(self) -> bool:
        return True

    @property
    def used(self) -> list[float]:
        """The per-round values that count."""
        return [
            r.value
            for r in self.rounds
            if r.value is not None and not (self._excludes_disturbed and r.disturbed)
        ]

    @property
    def excluded(self) -> Counter[str]:
        """Rounds with a value left out, by reason."""
        if not self._excludes_disturbed:
            return Counter()
        return Counter(r.disturbed for r in self.rounds if r.value is not None and r.disturbed)

    def _rounds_dict(self) -> dict[str, Any]:
        return {
            "rounds": [{"value": _round(r.value), "disturbed": r.disturbed} for r in self.rounds],
            "used": len(self.used),
            "excluded": dict(self.excluded),
        }


@dataclass
class Cell(_Rounds):
    """A goal evaluated for one variant in one CPU mode."""

    goal: Goal
    variant: str
    mode: str
    rounds: list[RoundValue] = field(default_factory=list)
    note: str = ""  # what the figure could not say (a missing field, ...)

    @property
    def _excludes_disturbed(self) -> bool:
        return self.goal.excludes_disturbed

    @property
    def value(self) -> float | None:
        used = self.used
        if not used:
            return None
        return median(used) if self.goal.combine == "median" else max(used)

    @property
    def verdict(self) -> str:
        value = self.value
        if value is not None:
            return MET if self.goal.holds(value) else MISSED
        excluded = self.excluded
        if excluded:
            return excluded.most_common(1)[0][0]
        return NOT_AVAILABLE

    def detail(self) -> str:
        """The verdict's qualifiers: by how much, what was left out, noise."""
        parts: list[str] = []
        value = self.value
        if value is not None and not self.goal.holds(value):
            short = 100 * self.goal.shortfall(value)
            parts.append(f"by {short:.1f} %" if short < 10 else f"by {short:.0f} %")
        used = self.used
        if value is not None and len(used) > 1:
            low, high = min(used), max(used)
            if self.goal.holds(low) != self.goal.holds(high):
                parts.append("rounds on both sides of the goal")
        parts.extend(
            f"{n} of {len(self.rounds)} rounds left out: {reason}"
            for reason, n in sorted(self.excluded.items())
        )
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "goal": self.goal.id,
            "title": self.goal.title,
            "target": self.goal.text(),
            "op": self.goal.op,
            "threshold": self.goal.threshold,
            "unit": self.goal.unit.strip(),
            "variant": self.variant,
            "mode": self.mode,
            "value": _round(self.value),
            **self._rounds_dict(),
            "verdict": self.verdict,
            "detail": self.detail(),
        }


def evaluate(
    goal_id: str, variant: str, mode: str, rounds: Sequence[RoundValue], note: str = ""
) -> Cell:
    return Cell(GOALS[goal_id], variant, mode, list(rounds), note)


@dataclass(frozen=True)
class Measure:
    """A figure without a goal: reported, never met or missed."""

    id: str
    title: str
    unit: str = ""  # "" for a ratio


MEASURES = {
    m.id: m
    for m in (
        # Per analytics mode: max QPS with 2 workers over 1 worker's, in the
        # same round, the same load (several connections) on the same cores.
        Measure("workers_qps", "Max QPS, 2 workers ÷ 1 worker"),
        # Per echo layer (offpath.bench.echo): serving-core CPU per request
        # over the bare echo server's, in the same round, closed loop.
        Measure("layer_cpu", "Serving-core CPU per request over bare echo", " µs"),
    )
}


@dataclass
class Figure(_Rounds):
    """A measure for one variant in one CPU mode: the median of its rounds,
    the disturbed ones left out (as in the throughput cells)."""

    measure: Measure
    variant: str
    mode: str
    rounds: list[RoundValue] = field(default_factory=list)
    note: str = ""

    @property
    def value(self) -> float | None:
        return median(self.used)

    @property
    def verdict(self) -> str:
        """``measured``, or why there is no value (as a cell would say)."""
        if self.value is not None:
            return MEASURED
        excluded = self.excluded
        return excluded.most_common(1)[0][0] if excluded else NOT_AVAILABLE

    def detail(self) -> str:
        """The spread of the rounds used, what was left out, a note."""
        parts: list[str] = []
        used = self.used
        if len(used) > 1:
            parts.append(f"rounds {_number(min(used))} to {_number(max(used))}")
        parts.extend(
            f"{n} of {len(self.rounds)} rounds left out: {reason}"
            for reason, n in sorted(self.excluded.items())
        )
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.measure.id,
            "title": self.measure.title,
            "unit": self.measure.unit.strip(),
            "variant": self.variant,
            "mode": self.mode,
            "value": _round(self.value),
            **self._rounds_dict(),
            "verdict": self.verdict,
            "detail": self.detail(),
        }


def measure(
    measure_id: str, variant: str, mode: str, rounds: Sequence[RoundValue], note: str = ""
) -> Figure:
    return Figure(MEASURES[measure_id], variant, mode, list(rounds), note)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _number(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:,.0f}"
