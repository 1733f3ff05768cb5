"""The fault suite's fast cases, quick variants, through the same runner as
``make faults``: each must keep its promise (the table's verdict), with the
figures behind it checked here too so a runner that checked nothing could
not pass."""

from __future__ import annotations

import pytest

from offpath.faults import run
from offpath.faults.cases import BY_NAME, CASES

FAST = [case for case in CASES if case.fast]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, run.Outcome]:
    out = tmp_path_factory.mktemp("faults")
    done = run.run(FAST, rate=run.DEFAULT_RATE, quick=True, out=out)
    return {o.case: o for o in done}


def _explain(outcome: run.Outcome) -> str:
    return f"{outcome.case}: {run.row(outcome)[-1]} (details in faults.json)"


def test_the_fast_cases_are_the_ones_make_test_promises() -> None:
    assert {c.name for c in FAST} == {"sqs-5xx", "sqs-down-spool", "poison", "bad-grpc-input"}


def test_sqs_5xx_loses_nothing_and_leaves_query_p99_alone(
    outcomes: dict[str, run.Outcome],
) -> None:
    outcome = outcomes["sqs-5xx"]
    assert outcome.passed, _explain(outcome)
    assert outcome.emitted > 0
    assert outcome.delivered == outcome.emitted
    assert outcome.proxy["stats"]["injected"].get("http_503", 0) > 0


def test_sqs_unreachable_with_the_spool_delivers_every_event(
    outcomes: dict[str, run.Outcome],
) -> None:
    outcome = outcomes["sqs-down-spool"]
    assert outcome.passed, _explain(outcome)
    assert outcome.spool
    assert outcome.delivered == outcome.emitted > 0
    assert outcome.double_counted == 0


def test_poison_is_dead_lettered_at_once_and_good_events_land(
    outcomes: dict[str, run.Outcome],
) -> None:
    outcome = outcomes["poison"]
    assert outcome.passed, _explain(outcome)
    reasons = outcome.details["dlq_reasons"]
    assert len(reasons) == len(outcome.details["poison"]["kinds"])
    assert all(reasons)


def test_bad_grpc_input_gets_the_right_status_and_both_stay_healthy(
    outcomes: dict[str, run.Outcome],
) -> None:
    outcome = outcomes["bad-grpc-input"]
    assert outcome.passed, _explain(outcome)
    grpc = outcome.details["grpc"]
    assert grpc["probes"] > 100
    assert grpc["health"] == {"query": True, "ingest": True}
    assert "UNKNOWN" not in grpc["by_code"]
    assert "INTERNAL" not in grpc["by_code"]


def test_the_table_has_a_row_per_case(outcomes: dict[str, run.Outcome]) -> None:
    table = run.table(list(outcomes.values()))
    assert table.splitlines()[0].startswith("| case")
    assert len(table.splitlines()) == 2 + len(FAST)
    assert BY_NAME["sqs-5xx"].what in table
