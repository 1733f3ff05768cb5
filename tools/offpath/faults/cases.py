"""The cases of the fault suite: what each does, and what it promises.

A case is data; :mod:`offpath.faults.run` runs it. Durations come in two
sizes: the default run (``make faults``) and ``quick`` (a few seconds of
each fault, for ``make test``'s fast cases and for trying the suite).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["load", "kill-query", "kill-sender", "kill-ingest", "poison", "grpc", "soak"]
# Which proxy a fault goes through: QueryService's SQS, or AnalyticsIngest's DynamoDB.
Target = Literal["sqs", "dynamodb"]

# Query p99 "unmoved": during the fault at most this times the p99 before
# it, or at most this many ms above it (at 100 req/s a p99 is the 10th
# slowest of 1,000, and sub-millisecond tails move by tenths of a ms from
# run to run with nothing injected). The benchmark holds the tight contract
# (≤ 1.05, medians over interleaved rounds); this is one run per case.
P99_RATIO_LIMIT = 1.5
P99_SLACK_MS = 1.0
# Good events beside poison messages land within this many seconds of the load's end.
PROMPT_S = 10.0


@dataclass(frozen=True)
class Promise:
    """What a case checks (each true promise is one check)."""

    p99_unmoved: bool = False
    none_lost: bool = False  # delivered = emitted
    losses_counted: bool = True  # emitted - delivered = events dropped, by reason
    no_double_count: bool = True  # GetSummary's event_count = events stored
    no_dead_letters: bool = True  # nothing in the DLQ (poison aside)


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    what: str  # the fault, as the table shows it
    promise: Promise
    spool: bool = False
    target: Target = "sqs"
    faults: dict[str, Any] = field(default_factory=dict)
    fault_s: float = 8.0
    quick_fault_s: float = 4.0
    # Load before the fault (the p99 baseline) and after it.
    before_s: float = 5.0
    after_s: float = 2.0
    # How long to wait, after the load, for every event to be readable.
    recovery_s: float = 60.0
    fast: bool = False  # also one of make test's cases (quick variant)


_SQS_MILD = Promise(p99_unmoved=True, none_lost=True)
_STORE = Promise(none_lost=True)

CASES: tuple[Case, ...] = (
    Case(
        "sqs-latency",
        "load",
        "SQS +300 ms",
        _SQS_MILD,
        faults={"delay_s": 0.3},
    ),
    Case(
        "sqs-5xx",
        "load",
        "SQS 10 % 5xx",
        _SQS_MILD,
        faults={"error_rate": 0.1, "error_status": 503},
        fast=True,
    ),
    Case(
        "sqs-throttled",
        "load",
        "SQS 90 % throttled",
        _SQS_MILD,
        faults={"throttle_rate": 0.9},
    ),
    Case(
        "sqs-partial-batch",
        "load",
        "SQS 30 % of batch entries failed",
        _SQS_MILD,
        faults={"batch_fail_rate": 0.3},
    ),
    Case(
        "sqs-refused",
        "load",
        "SQS refuses connections",
        _SQS_MILD,
        faults={"refuse": True},
    ),
    Case(
        "sqs-down-spool",
        "load",
        "SQS unreachable (blackhole) then back",
        Promise(p99_unmoved=True, none_lost=True),
        spool=True,
        faults={"blackhole": True},
        fault_s=30.0,
        quick_fault_s=5.0,
        recovery_s=90.0,
        fast=True,
    ),
    Case(
        "sqs-down-nospool",
        "load",
        "SQS unreachable (blackhole) then back",
        Promise(p99_unmoved=True, none_lost=False),
        faults={"blackhole": True},
        fault_s=30.0,
        quick_fault_s=5.0,
        recovery_s=60.0,
    ),
    Case(
        "kill-query",
        "kill-query",
        "kill -9 QueryService after replies",
        Promise(none_lost=True, losses_counted=False),
        spool=True,
        fault_s=5.0,
        quick_fault_s=3.0,
    ),
    Case(
        "kill-sender",
        "kill-sender",
        "kill -9 the sender process mid-load",
        Promise(none_lost=True),
        spool=True,
        fault_s=6.0,
        quick_fault_s=4.0,
    ),
    Case(
        "kill-ingest",
        "kill-ingest",
        "kill -9 AnalyticsIngest mid-batch",
        Promise(none_lost=True),
        target="dynamodb",
        faults={"delay_s": 0.03},  # slow writes, so a batch is in hand when it dies
        fault_s=6.0,
        quick_fault_s=4.0,
        recovery_s=90.0,
    ),
    Case(
        "ddb-throttled",
        "load",
        "DynamoDB 90 % throttled, 50 % of transactions cancelled",
        _STORE,
        target="dynamodb",
        faults={"throttle_rate": 0.9, "txn_cancel_rate": 0.5},
        recovery_s=120.0,
    ),
    Case(
        "ddb-down",
        "load",
        "DynamoDB unavailable (503) then back",
        _STORE,
        target="dynamodb",
        faults={"error_rate": 1.0, "error_status": 503},
        fault_s=30.0,
        quick_fault_s=5.0,
        recovery_s=180.0,
    ),
    Case(
        "poison",
        "poison",
        "poison messages beside good ones",
        Promise(none_lost=True, no_dead_letters=False),
        fault_s=6.0,
        quick_fault_s=4.0,
        recovery_s=30.0,
        fast=True,
    ),
    Case(
        "bad-grpc-input",
        "grpc",
        "bad gRPC input, both services",
        Promise(losses_counted=False, no_double_count=False, no_dead_letters=False),
        fast=True,
    ),
)

SOAK = Case(
    "soak",
    "soak",
    "none, for a long while",
    Promise(none_lost=True),
    spool=True,
    fault_s=600.0,
    quick_fault_s=60.0,
    before_s=0.0,
    after_s=0.0,
    recovery_s=120.0,
)

BY_NAME = {case.name: case for case in (*CASES, SOAK)}
