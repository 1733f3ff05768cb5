"""Goal evaluation: verdicts, by how much a goal is missed, and rounds left
out because the load generator (or other work) disturbed them."""

from __future__ import annotations

import pytest

from offpath.bench.goals import (
    CORE_SHARED,
    GENERATOR_LATE,
    GOALS,
    MEASURED,
    MEASURES,
    MET,
    MISSED,
    NOT_AVAILABLE,
    RoundValue,
    evaluate,
    measure,
)

# Every goal of the contract (item 3 of "The emitter, proven").
CONTRACT = {
    "p99",
    "p99_sqs_slow",
    "p99_sqs_down",
    "p999",
    "p99_at_max",
    "max_qps",
    "cpu_per_event",
    "burst",
    "loop_lag",
    "sqs_per_1000",
    "freshness",
}


def test_the_contract_has_a_goal_for_every_figure() -> None:
    """Each figure of the performance contract is a goal with its threshold."""
    assert set(GOALS) == CONTRACT
    assert GOALS["p99"].threshold == 1.05
    assert GOALS["p999"].threshold == 1.5
    assert GOALS["p99_at_max"].threshold == 1.10
    assert (GOALS["max_qps"].op, GOALS["max_qps"].threshold) == (">=", 0.97)
    assert GOALS["cpu_per_event"].threshold == 5.0
    assert GOALS["burst"].threshold == 0.5
    assert GOALS["loop_lag"].threshold == 1.2
    assert GOALS["sqs_per_1000"].threshold == 5.0
    assert GOALS["freshness"].threshold == 2.0


class TestVerdict:
    def test_median_within_the_goal_is_met(self) -> None:
        """The median of the rounds decides: one bad round of three does not."""
        cell = evaluate("p99", "background", "pinned", [RoundValue(v) for v in (1.01, 1.9, 1.03)])
        assert cell.value == pytest.approx(1.03)
        assert cell.verdict == MET

    def test_missed_says_by_how_much(self) -> None:
        """A ceiling missed by 20 % says so."""
        cell = evaluate("p99", "background", "pinned", [RoundValue(1.26)] * 3)
        assert cell.verdict == MISSED
        assert "by 20 %" in cell.detail()

    def test_a_floor_is_missed_from_below(self) -> None:
        """Max QPS is a floor: 0.90 misses 0.97 by 7 %, 0.98 meets it."""
        assert evaluate("max_qps", "b", "m", [RoundValue(0.98)]).verdict == MET
        missed = evaluate("max_qps", "b", "m", [RoundValue(0.90)])
        assert missed.verdict == MISSED
        assert "by 7.2 %" in missed.detail()

    def test_a_near_miss_keeps_a_decimal(self) -> None:
        """1.51 against 1.5 is missed by 0.7 %, not by "0 %"."""
        assert "by 0.7 %" in evaluate("p999", "b", "m", [RoundValue(1.51)]).detail()

    def test_no_value_is_not_available(self) -> None:
        """A variant that never ran gets n/a, with the note saying why."""
        cell = evaluate("p99", "background-process", "pinned", [], "not available: no such sender")
        assert cell.verdict == NOT_AVAILABLE
        assert "no such sender" in cell.detail()

    def test_rounds_on_both_sides_are_flagged(self) -> None:
        """When rounds fall on both sides of the goal, the verdict says so."""
        cell = evaluate("cpu_per_event", "b", "m", [RoundValue(v) for v in (2.0, 4.0, 9.0)])
        assert cell.verdict == MET
        assert "both sides" in cell.detail()

    def test_a_worst_case_goal_takes_the_worst_round(self) -> None:
        """ "No single burst above 0.5 ms": one round's 0.8 ms misses it."""
        cell = evaluate("burst", "b", "m", [RoundValue(v) for v in (0.1, 0.8, 0.2)])
        assert cell.value == pytest.approx(0.8)
        assert cell.verdict == MISSED


class TestDisturbedRounds:
    def test_late_rounds_are_left_out_and_counted(self) -> None:
        """A round where the generator was late does not count; the count shows."""
        rounds = [RoundValue(1.02), RoundValue(3.0, GENERATOR_LATE), RoundValue(1.04)]
        cell = evaluate("p99", "background", "pinned", rounds)
        assert cell.used == [1.02, 1.04]
        assert cell.verdict == MET
        assert "1 of 3 rounds left out: load generator late" in cell.detail()

    def test_every_round_late_names_the_generator(self) -> None:
        """When no round is evidence, the verdict blames the generator, not
        the server."""
        rounds = [RoundValue(3.0, GENERATOR_LATE), RoundValue(2.0, GENERATOR_LATE)]
        assert evaluate("p99", "b", "m", rounds).verdict == GENERATOR_LATE

    def test_the_most_common_reason_wins(self) -> None:
        """With several reasons, the verdict names the most frequent one."""
        rounds = [
            RoundValue(3.0, CORE_SHARED),
            RoundValue(2.0, CORE_SHARED),
            RoundValue(2.0, GENERATOR_LATE),
        ]
        assert evaluate("p99", "b", "m", rounds).verdict == CORE_SHARED

    def test_cpu_and_counts_do_not_depend_on_the_generator(self) -> None:
        """CPU per event, SQS requests and freshness keep disturbed rounds."""
        rounds = [RoundValue(4.0, GENERATOR_LATE), RoundValue(6.0, GENERATOR_LATE)]
        for goal in ("cpu_per_event", "sqs_per_1000", "freshness"):
            cell = evaluate(goal, "b", "m", rounds)
            assert cell.used == [4.0, 6.0]
            assert not cell.excluded

    def test_as_dict_keeps_every_round(self) -> None:
        """The JSON keeps each round's value and disturbance, used or not."""
        rounds = [RoundValue(1.0), RoundValue(2.0, GENERATOR_LATE)]
        record = evaluate("p99", "background", "pinned", rounds).as_dict()
        assert record["rounds"] == [
            {"value": 1.0, "disturbed": None},
            {"value": 2.0, "disturbed": GENERATOR_LATE},
        ]
        assert (record["used"], record["excluded"], record["verdict"]) == (
            1,
            {GENERATOR_LATE: 1},
            MET,
        )
        assert record["target"] == "≤ 1.05"


class TestFigures:
    """Figures without a goal: the same rounds, medians and exclusions as a
    cell, and no verdict on the value."""

    def test_the_median_of_the_rounds_is_measured_not_judged(self) -> None:
        """A value is reported as measured, with the spread of its rounds."""
        figure = measure(
            "workers_qps",
            "off",
            "unpinned",
            [RoundValue(1.3), RoundValue(1.1), RoundValue(1.2)],
            "8 connections",
        )
        assert figure.value == pytest.approx(1.2)
        assert figure.verdict == MEASURED
        assert figure.detail() == "rounds 1.1 to 1.3; 8 connections"

    def test_disturbed_rounds_are_left_out_and_counted(self) -> None:
        """As in the throughput cells; every round left out names the reason."""
        figure = measure(
            "workers_qps",
            "off",
            "unpinned",
            [RoundValue(1.3), RoundValue(0.6, CORE_SHARED)],
        )
        assert figure.value == pytest.approx(1.3)
        assert "1 of 2 rounds left out: serving core shared" in figure.detail()
        only_disturbed = measure("workers_qps", "off", "unpinned", [RoundValue(0.6, CORE_SHARED)])
        assert only_disturbed.value is None
        assert only_disturbed.verdict == CORE_SHARED
        assert measure("workers_qps", "off", "unpinned", []).verdict == NOT_AVAILABLE

    def test_as_dict_keeps_every_round(self) -> None:
        """The JSON names the figure and keeps each round, disturbed or not."""
        data = measure(
            "workers_qps", "background", "unpinned", [RoundValue(1.25), RoundValue(2.0, "x")]
        ).as_dict()
        assert data["figure"] == "workers_qps"
        assert data["title"] == MEASURES["workers_qps"].title
        assert data["value"] == 1.25
        assert data["rounds"] == [
            {"value": 1.25, "disturbed": None},
            {"value": 2.0, "disturbed": "x"},
        ]
        assert data["verdict"] == MEASURED
        assert "threshold" not in data
