"""The fault suite: ``python -m offpath.faults [--cases NAME ...] [--quick] [--soak]``
(``make faults``).

One local AWS endpoint (moto, at the lowest OS priority) serves the whole
run; each case gets its own queue, DLQ and tables, fault proxies in front of
the endpoint (QueryService's SQS through one, AnalyticsIngest's DynamoDB
through the other; AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL_DYNAMODB, which
botocore honours per service), and a fresh AnalyticsIngest and QueryService
as real processes on free ports. Load is open loop at ``--rate`` (100
req/s by default) on 127.0.0.1; every acknowledged reply's event id is kept.

Per case it prints one row: the offered load, the fault, Query p99 during
the fault ÷ before it, and the events: emitted (acknowledged replies),
delivered (readable through GetEvent/ListEvents once the case recovered),
dropped by reason and spooled (QueryService's emitter counters), lost
(emitted - delivered - dropped: events that vanished without being counted),
double-counted (GetSummary's event_count - events stored), dead-lettered;
then the verdict against the case's promise (:mod:`offpath.faults.cases`).
Results: ``faults-results/<time>/faults.json`` and the services' logs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import grpc

from offpath.bench import procs
from offpath.client.aio import AsyncOffpathClient
from offpath.client.load import LoadResult, percentile, run_load
from offpath.client.reconcile import IdFile, reconcile
from offpath.client.settings import ClientSettings
from offpath.dev.bootstrap import ResourceNames, Resources, bootstrap
from offpath.dev.faultproxy import Faults, ProxyControl
from offpath.dev.stack import Child, DevStack
from offpath.faults import grpcinput
from offpath.faults.cases import (
    BY_NAME,
    CASES,
    P99_RATIO_LIMIT,
    P99_SLACK_MS,
    PROMPT_S,
    SOAK,
    Case,
)
from offpath.faults.poison import poison_messages
from offpath.kit.logs import configure_logging, parse_line, read_log
from offpath.kit.metrics import scrape
from offpath.kit.sqs import REASON_ATTRIBUTE, QueueNames

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

RESULTS = Path("faults-results")
DEFAULT_RATE = 100.0
SOAK_RATE = 200.0
HELPER_NICE = 19
PRODUCER_ID = "faults-producer"
# RSS growth after warm-up the soak allows, and its warm-up share.
SOAK_RSS_GROWTH = 0.10
SOAK_WARMUP_SHARE = 0.2
_SAMPLE_S = 5.0
_POLL_S = 2.0
_DRAIN_POLL_S = 0.5
WARMUP_S = 3.0
QUICK_WARMUP_S = 2.0


# -- results ------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Outcome:
    """One case's row and what stands behind it."""

    case: str
    what: str
    spool: bool
    rate: float
    started_at: str = ""
    duration_s: float = 0.0
    p99_before_ms: float | None = None
    p99_during_ms: float | None = None
    emitted: int = 0
    delivered: int | None = None
    missing: list[str] = field(default_factory=list)
    dropped: dict[str, int] | None = None
    spooled: int | None = None
    replayed: int | None = None
    enqueued: int | None = None
    stored: int | None = None
    summary_count: int | None = None
    dead_lettered: int | None = None
    query_errors: dict[str, int] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def p99_ratio(self) -> float | None:
        if self.p99_before_ms and self.p99_during_ms is not None:
            return self.p99_during_ms / self.p99_before_ms
        return None

    @property
    def lost(self) -> int | None:
        """Missing events no drop counter explains (None: the counters died with a process)."""
        if self.delivered is None:
            return None
        missing = self.emitted - self.delivered
        if self.dropped is None:
            return missing
        return max(0, missing - sum(self.dropped.values()))

    @property
    def double_counted(self) -> int | None:
        if self.stored is None or self.summary_count is None:
            return None
        return self.summary_count - self.stored

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing"] = self.missing[:50]
        data["missing_count"] = len(self.missing)
        data.update(
            p99_ratio=self.p99_ratio,
            lost=self.lost,
            double_counted=self.double_counted,
            passed=self.passed,
        )
        return data


def _p99_ms(result: LoadResult) -> float | None:
    values = sorted(result.latencies_ns)
    return percentile(values, 99) / 1e6 if values else None


def _parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """{name without _total: {label text: value}} from Prometheus text."""
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        name = name.removesuffix("_total")
        with contextlib.suppress(ValueError):
            found.setdefault(name, {})[labels.rstrip("}")] = float(value)
    return found


def _emitter_counters(port: int | None) -> dict[str, Any] | None:
    if port is None:
        return None
    try:
        metrics = _parse_metrics(scrape(port, timeout=5))
    except OSError:
        return None

    def total(name: str) -> int:
        return int(sum(metrics.get(name, {}).values()))

    dropped = {
        labels.partition('"')[2].rstrip('"'): int(value)
        for labels, value in metrics.get("offpath_emitter_events_dropped", {}).items()
        if value
    }
    return {
        "enqueued": total("offpath_emitter_events_enqueued"),
        "sent": total("offpath_emitter_events_sent"),
        "spooled": total("offpath_emitter_events_spooled"),
        "replayed": total("offpath_emitter_events_replayed"),
        "buffered": total("offpath_emitter_buffered_events"),
        "dropped": dropped,
    }


def _ingest_counters(port: int | None) -> dict[str, int]:
    if port is None:
        return {}
    try:
        metrics = _parse_metrics(scrape(port, timeout=5))
    except OSError:
        return {}
    return {
        name.removeprefix("offpath_ingest_"): int(sum(values.values()))
        for name, values in metrics.items()
        if name.startswith("offpath_ingest_") and not name.startswith("offpath_ingest_lag")
    }


# -- the harness ----------------------------------------------------------------------


@dataclass
class Services:
    """One case's processes and resources."""

    names: ResourceNames
    resources: Resources
    ingest: Child
    query: Child
    env_ingest: dict[str, str]
    env_query: dict[str, str]
    spool_dir: Path | None

    @property
    def query_target(self) -> str:
        return f"127.0.0.1:{self.query.port}"

    @property
    def ingest_target(self) -> str:
        return f"127.0.0.1:{self.ingest.port}"


class Harness:
    """The endpoint and the proxies for the whole run; services per case."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.stack = DevStack(aws_port=0, log_dir=out / "logs", nice=HELPER_NICE)
        self.sqs_proxy: ProxyControl | None = None
        self.ddb_proxy: ProxyControl | None = None
        self._case_children: list[str] = []
        self._saved_env: dict[str, str] = {}
        # The last case's QueryService loss report at shutdown, by reason.
        self.shutdown_losses: dict[str, int] = {}

    def __enter__(self) -> Harness:
        # Put back on exit: a test may run the suite inside its own process.
        self._saved_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        try:
            self.stack.start(("local-aws",))
            # This process's own AWS calls (set-up, poison, the DLQ) go
            # straight to the endpoint; the services' go through the proxies.
            for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]:
                del os.environ[key]
            os.environ.update(self.stack.aws_env())
            self.sqs_proxy = self._proxy("sqs-proxy")
            self.ddb_proxy = self._proxy("dynamodb-proxy")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _proxy(self, name: str) -> ProxyControl:
        """A fault proxy in its own process at the lowest priority, like the
        endpoint: in this process it would take turns with the load
        generator for the interpreter and show up in the latencies."""
        upstream = f"127.0.0.1:{self.stack.port('local-aws')}"
        child = self.stack.spawn(
            name,
            "offpath.dev.faultproxy",
            {},
            args=("--upstream", upstream, "--control-port", "0"),
            nice=HELPER_NICE,
        )
        for line in list(child.tail):
            record = parse_line(line)
            if record is not None and record["event"] == "server_started":
                assert child.port is not None
                return ProxyControl(child.port, int(record["control_port"]))
        raise RuntimeError(f"{name} did not say its control port")

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[key]
        os.environ.update(self._saved_env)

    def proxy(self, case: Case) -> ProxyControl:
        proxy = self.sqs_proxy if case.target == "sqs" else self.ddb_proxy
        assert proxy is not None
        return proxy

    def sqs(self) -> SQSClient:
        client: Any = boto3.session.Session(region_name=os.environ["AWS_REGION"]).client("sqs")
        return client  # type: ignore[no-any-return]

    def dynamodb(self) -> DynamoDBClient:
        session = boto3.session.Session(region_name=os.environ["AWS_REGION"])
        client: Any = session.client("dynamodb")
        return client  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def services(
        self, case: Case, *, ingest_env: dict[str, str] | None = None
    ) -> Iterator[Services]:
        assert self.sqs_proxy is not None
        assert self.ddb_proxy is not None
        for proxy in (self.sqs_proxy, self.ddb_proxy):
            proxy.set()
            proxy.reset_stats()
        tag = f"faults-{case.name}-{int(time.time())}"
        names = ResourceNames(
            queues=QueueNames(queue=f"{tag}.fifo", dlq=f"{tag}-dlq.fifo"), table=tag
        )
        resources = bootstrap(names)
        common = {
            **self.stack.aws_env(),
            "OFFPATH_SQS_QUEUE_NAME": names.queues.queue,
            "OFFPATH_SQS_DLQ_NAME": names.queues.dlq,
            "OFFPATH_DDB_TABLE": names.table,
        }
        env_ingest = {
            **common,
            "OFFPATH_INGEST_HOST": "127.0.0.1",
            "OFFPATH_INGEST_PORT": "0",
            "OFFPATH_INGEST_METRICS_PORT": "0",
            "OFFPATH_INGEST_WAIT_S": "1",
            "AWS_ENDPOINT_URL_DYNAMODB": self.ddb_proxy.url,
            **(ingest_env or {}),
        }
        spool_dir = self.out / "spool" / case.name if case.spool else None
        env_query = {
            **common,
            "OFFPATH_QUERY_HOST": "127.0.0.1",
            "OFFPATH_QUERY_PORT": "0",
            "OFFPATH_QUERY_METRICS_PORT": "0",
            "OFFPATH_PRODUCER_ID": PRODUCER_ID,
            "AWS_ENDPOINT_URL_SQS": self.sqs_proxy.url,
        }
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
            env_query["OFFPATH_EMIT_SPOOL_DIR"] = str(spool_dir)
        ingest = self.spawn(f"{case.name}-ingest", "offpath.ingest", env_ingest, nice=HELPER_NICE)
        query = self.spawn(f"{case.name}-query", "offpath.query", env_query)
        running = Services(names, resources, ingest, query, env_ingest, env_query, spool_dir)
        try:
            yield running
        finally:
            self.sqs_proxy.set()
            self.ddb_proxy.set()
            for name in reversed(self._case_children):
                self.stack.stop_child(name)
                del self.stack.children[name]
            self.shutdown_losses = self._reported_losses(
                [n for n in self._case_children if "-query" in n]
            )
            self._case_children.clear()

    def _reported_losses(self, names: list[str]) -> dict[str, int]:
        """What QueryService's ``events_lost`` line said at shutdown, by
        reason, summed over the case's QueryService processes."""
        total: Counter[str] = Counter()
        for name in names:
            path = self.out / "logs" / f"{name}.log"
            if not path.exists():
                continue
            for record in read_log(path):
                if record.get("event") == "events_lost":
                    total.update(record.get("by_reason", {}))
        return dict(total)

    def spawn(
        self, name: str, module: str, env: dict[str, str], *, nice: int | None = None
    ) -> Child:
        """A service for the case now running (stopped when it ends).
        AnalyticsIngest runs at ``nice`` 19 as in the benchmark: its writes
        (and the endpoint's work for them) share the 2 cores with the load
        generator and QueryService, and would show in Query p99."""
        self._case_children.append(name)
        return self.stack.spawn(name, module, env, nice=nice)

    def log(self, child: Child) -> Path:
        return self.out / "logs" / f"{child.name}.log"


# -- accounting ----------------------------------------------------------------------------


def _client(services: Services, timeout: float = 10.0) -> AsyncOffpathClient:
    return AsyncOffpathClient(
        services.query_target, services.ingest_target, timeout=timeout, settings=ClientSettings()
    )


def _queue_depth(sqs: SQSClient, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


async def _delivered(
    services: Services,
    ids: list[str],
    deadline: float,
    settled: Callable[[int], bool] | None = None,
    drained: Callable[[], bool] | None = None,
) -> tuple[int, list[str]]:
    """(delivered, missing) once every id is readable, or ``settled(missing)``
    says the rest will not come, or at ``deadline``. Before each look at the
    store, ``drained()`` is waited for (cheap: counters), so a backlog is
    not read through the API again and again while it drains."""
    distinct = sorted(set(ids))
    while True:
        while drained is not None and time.monotonic() < deadline:
            if await asyncio.to_thread(drained):
                break
            await asyncio.sleep(_DRAIN_POLL_S)
        async with _client(services) as client:
            result = await reconcile(client, IdFile(distinct, []))
        if not result.missing or time.monotonic() >= deadline:
            return result.delivered, result.missing
        if settled is not None and await asyncio.to_thread(settled, len(result.missing)):
            return result.delivered, result.missing
        await asyncio.sleep(_POLL_S)


async def _stored_and_summary(
    harness: Harness, services: Services, since: datetime
) -> tuple[int, int]:
    """Events stored in the case's table (counted by a Scan of it, so the
    count does not depend on the read API, and stays cheap when the local
    endpoint's index Queries slow down with a large table: a soak stores
    120,000 events) and GetSummary's event_count over the case's range. The
    summary is asked again until it agrees or 15 s pass (rollups follow the
    events by a moment)."""
    start, end = since - timedelta(minutes=10), datetime.now(UTC) + timedelta(minutes=10)
    stored = await asyncio.to_thread(_count_items, harness.dynamodb(), services.names.table)
    deadline = time.monotonic() + 15
    async with _client(services, timeout=60.0) as client:
        while True:
            summary = int((await client.summary(start=start, end=end)).event_count)
            if summary == stored or time.monotonic() >= deadline:
                return stored, summary
            await asyncio.sleep(1)


def _count_items(dynamodb: DynamoDBClient, table: str) -> int:
    """The items of ``table`` (every one an event: rollups and markers are in
    the rollup table)."""
    count = 0
    kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT"}
    while True:
        page = dynamodb.scan(**kwargs)
        count += int(page["Count"])
        last = page.get("LastEvaluatedKey")
        if not last:
            return count
        kwargs["ExclusiveStartKey"] = last


def _dlq_messages(sqs: SQSClient, url: str) -> list[dict[str, Any]]:
    """Everything in the DLQ (received once, hidden for a minute: read-only use)."""
    found: dict[str, dict[str, Any]] = {}
    for _ in range(20):
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        for message in got:
            found[message["MessageId"]] = dict(message)
    return list(found.values())


async def account(
    harness: Harness,
    case: Case,
    services: Services,
    outcome: Outcome,
    ids: list[str],
    *,
    recovery_s: float,
    since: datetime,
    emitter_known: bool = True,
) -> None:
    """Fill in delivered, dropped, spooled, stored, summary and DLQ, and
    check the promise."""
    outcome.emitted = len(set(ids))
    sqs = harness.sqs()
    query_metrics = services.query.metrics_port

    def settled(missing: int) -> bool:
        # Nothing buffered in the emitter, nothing left in the queue, and
        # every missing event counted as dropped: no more will come.
        counters = _emitter_counters(query_metrics)
        if counters is None or counters["buffered"]:
            return False
        if _queue_depth(sqs, services.resources.queue_url):
            return False
        dropped: dict[str, int] = counters["dropped"]
        return missing <= sum(dropped.values())

    timing = outcome.details.setdefault("timing_s", {})
    began = time.monotonic()

    def drained() -> bool:
        # The emitter holds nothing and the queue is empty (nothing waiting,
        # nothing in AnalyticsIngest's hands): what was sent is written.
        counters = _emitter_counters(query_metrics)
        if counters is not None and counters["buffered"]:
            return False
        return _queue_depth(sqs, services.resources.queue_url) == 0

    outcome.delivered, outcome.missing = await _delivered(
        services, ids, time.monotonic() + recovery_s, settled, drained
    )
    timing["delivered"] = round(time.monotonic() - began, 1)
    counters = _emitter_counters(query_metrics)
    if counters is not None:
        outcome.spooled, outcome.replayed = counters["spooled"], counters["replayed"]
        outcome.enqueued = counters["enqueued"]
        outcome.dropped = counters["dropped"] if emitter_known else None
        outcome.details["emitter"] = counters
    outcome.details["ingest"] = _ingest_counters(services.ingest.metrics_port)
    began = time.monotonic()
    outcome.stored, outcome.summary_count = await _stored_and_summary(harness, services, since)
    timing["stored_and_summary"] = round(time.monotonic() - began, 1)
    outcome.dead_lettered = _queue_depth(sqs, services.resources.dlq_url)
    if outcome.dead_lettered and "dlq_reasons" not in outcome.details:
        dlq = _dlq_messages(sqs, services.resources.dlq_url)
        outcome.details["dlq_reasons"] = [_reason(m) for m in dlq]
    outcome.proxy = harness.proxy(case).snapshot()
    _check_promise(case, outcome)


def _reason(message: dict[str, Any]) -> str | None:
    attribute = message.get("MessageAttributes", {}).get(REASON_ATTRIBUTE)
    return attribute.get("StringValue") if attribute else None


def _check_shutdown_report(case: Case, outcome: Outcome, reported: dict[str, int]) -> None:
    """QueryService's own loss report at shutdown (its ``events_lost`` line)
    must not name more losses than there were: after the case, everything
    it emitted was read back or counted as dropped, and nothing new came."""
    outcome.details["shutdown_losses"] = reported
    if case.kind == "grpc" or outcome.delivered is None:
        return
    missing = outcome.emitted - outcome.delivered
    total = sum(reported.values())
    outcome.checks.append(
        Check(
            "shutdown loss report true",
            total <= missing,
            f"QueryService reported {total} lost at shutdown "
            f"({', '.join(f'{k} {v}' for k, v in sorted(reported.items())) or 'none'}); "
            f"{missing} missing",
        )
    )


def _check_promise(case: Case, outcome: Outcome) -> None:
    promise = case.promise
    if promise.p99_unmoved:
        before, during = outcome.p99_before_ms, outcome.p99_during_ms
        ok = (
            before is not None
            and during is not None
            and (during <= before * P99_RATIO_LIMIT or during - before <= P99_SLACK_MS)
        )
        outcome.checks.append(
            Check(
                "p99 unmoved",
                ok,
                f"{before or 0:.2f} → {during or 0:.2f} ms "
                f"(limit x{P99_RATIO_LIMIT} or +{P99_SLACK_MS:g} ms)",
            )
        )
        errors = sum(outcome.query_errors.values())
        outcome.checks.append(
            Check("queries answered", errors == 0, f"{errors} failed: {outcome.query_errors}")
        )
    missing = outcome.emitted - (outcome.delivered or 0)
    if promise.none_lost:
        outcome.checks.append(
            Check("delivered = emitted", missing == 0, f"{missing} of {outcome.emitted} missing")
        )
    if promise.losses_counted:
        lost = outcome.lost
        outcome.checks.append(
            Check(
                "every loss counted",
                lost == 0,
                f"{lost} missing with no drop counted"
                if outcome.dropped is not None
                else "emitter counters unavailable",
            )
        )
    if promise.no_double_count:
        double = outcome.double_counted
        outcome.checks.append(
            Check(
                "summary = stored",
                double == 0,
                f"GetSummary {outcome.summary_count}, stored {outcome.stored}",
            )
        )
    if promise.no_dead_letters:
        outcome.checks.append(
            Check("nothing dead-lettered", outcome.dead_lettered == 0, f"{outcome.dead_lettered}")
        )


# -- the cases ------------------------------------------------------------------------------


def _durations(case: Case, quick: bool) -> tuple[float, float, float]:
    if quick:
        return min(case.before_s, 3.0), case.quick_fault_s, min(case.after_s, 1.0)
    return case.before_s, case.fault_s, case.after_s


async def _load(target: str, rate: float, duration_s: float) -> LoadResult:
    return await run_load(target, rate=rate, duration_s=duration_s, warmup_s=0, timeout_s=5)


def _merge_errors(outcome: Outcome, *results: LoadResult) -> list[str]:
    ids: list[str] = []
    errors: Counter[str] = Counter(outcome.query_errors)
    for result in results:
        ids.extend(result.event_ids)
        errors.update(result.errors)
    outcome.query_errors = dict(errors)
    return ids


async def run_load_case(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    before_s, fault_s, after_s = _durations(case, quick)
    proxy = harness.proxy(case)
    with harness.services(case) as services:
        since = datetime.now(UTC)
        # Warm-up: the first requests of a fresh process are slow (imports,
        # caches, connections); its events count, its latencies do not.
        warm = await _load(services.query_target, rate, QUICK_WARMUP_S if quick else WARMUP_S)
        before = await _load(services.query_target, rate, before_s)
        proxy.reset_stats()
        proxy.set(Faults.from_json(case.faults))
        during = await _load(services.query_target, rate, fault_s)
        proxy.set()
        after = await _load(services.query_target, rate, after_s)
        outcome.p99_before_ms, outcome.p99_during_ms = _p99_ms(before), _p99_ms(during)
        ids = _merge_errors(outcome, warm, before, during, after)
        injected = sum(proxy.snapshot()["stats"]["injected"].values())
        outcome.checks.append(Check("fault exercised", injected > 0, f"{injected} faults injected"))
        recovery = case.recovery_s if not quick else min(case.recovery_s, 60.0)
        await account(harness, case, services, outcome, ids, recovery_s=recovery, since=since)


async def run_kill_query(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    _, load_s, _ = _durations(case, quick)
    with harness.services(case) as services:
        since = datetime.now(UTC)
        result = await _load(services.query_target, rate, load_s)
        # Right after the last acknowledged reply.
        process = services.query.process
        process.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(process.wait, 10)
        outcome.details["killed"] = {"pid": process.pid, "exit": code}
        restarted = harness.spawn(
            f"{case.name}-query-restarted", "offpath.query", services.env_query
        )
        services.query = restarted
        ids = _merge_errors(outcome, result)
        await account(
            harness,
            case,
            services,
            outcome,
            ids,
            recovery_s=case.recovery_s,
            since=since,
            emitter_known=False,
        )


async def run_kill_sender(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    _, load_s, _ = _durations(case, quick)
    with harness.services(case) as services:
        since = datetime.now(UTC)
        killed: list[int] = []

        def kill() -> None:
            for pid in procs.descendants(services.query.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

        timer = asyncio.get_running_loop().call_later(load_s / 2, kill)
        result = await _load(services.query_target, rate, load_s)
        timer.cancel()
        outcome.details["killed_pids"] = killed
        if not killed:
            outcome.error = "no sender process found under QueryService"
        ids = _merge_errors(outcome, result)
        await account(
            harness, case, services, outcome, ids, recovery_s=case.recovery_s, since=since
        )


async def run_kill_ingest(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    _, load_s, _ = _durations(case, quick)
    proxy = harness.proxy(case)
    with harness.services(case) as services:
        since = datetime.now(UTC)
        proxy.set(Faults.from_json(case.faults))
        stop = threading.Event()
        killed: dict[str, Any] = {}

        def kill_mid_batch() -> None:
            # Wait for writes in flight: DynamoDB requests arriving now.
            time.sleep(load_s / 3)
            last = proxy.snapshot()["stats"]["requests"]
            while not stop.wait(0.02):
                now = proxy.snapshot()["stats"]["requests"]
                if now > last:
                    services.ingest.process.send_signal(signal.SIGKILL)
                    killed.update(pid=services.ingest.process.pid, ddb_requests=now)
                    return
                last = now

        killer = threading.Thread(target=kill_mid_batch, daemon=True)
        killer.start()
        result = await _load(services.query_target, rate, load_s)
        stop.set()
        killer.join()
        proxy.set()
        outcome.details["killed"] = killed
        if not killed:
            outcome.error = "AnalyticsIngest was never seen writing, so never killed"
        else:
            await asyncio.to_thread(services.ingest.process.wait, 10)
            services.ingest = harness.spawn(
                f"{case.name}-ingest-restarted",
                "offpath.ingest",
                services.env_ingest,
                nice=HELPER_NICE,
            )
        ids = _merge_errors(outcome, result)
        await account(
            harness, case, services, outcome, ids, recovery_s=case.recovery_s, since=since
        )


async def run_poison(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    _, load_s, _ = _durations(case, quick)
    sqs = harness.sqs()
    with harness.services(case) as services:
        since = datetime.now(UTC)
        poison = poison_messages(services.resources.queue_url, PRODUCER_ID)

        async def send_poison() -> list[float]:
            await asyncio.sleep(load_s / 3)
            sent = []
            for item in poison:
                await asyncio.to_thread(partial(sqs.send_message, **item.request))
                sent.append(time.monotonic())
                await asyncio.sleep(load_s / 3 / len(poison))
            return sent

        sender = asyncio.create_task(send_poison())
        result = await _load(services.query_target, rate, load_s)
        await sender
        load_end = time.monotonic()
        ids = _merge_errors(outcome, result)
        good = ids + [i for p in poison for i in p.good_ids]
        # Promptly: within PROMPT_S of the load's end ...
        prompt, missing_prompt = await _delivered(services, good, load_end + PROMPT_S)
        dlq = await asyncio.to_thread(_dlq_messages, sqs, services.resources.dlq_url)
        with_reason = [m for m in dlq if _reason(m)]
        expected = len(poison)
        outcome.details["dlq_reasons"] = [_reason(m) for m in dlq]
        outcome.details["poison"] = {
            "kinds": [p.kind for p in poison],
            "dlq_with_reason_within_prompt": len(with_reason),
            "good_delivered_promptly": prompt,
            "good_missing_promptly": len(missing_prompt),
        }
        outcome.checks.append(
            Check(
                "every poison message dead-lettered with a reason at once",
                len(with_reason) == expected == len(dlq),
                f"{len(with_reason)} of {expected} in the DLQ with a reason within "
                f"{PROMPT_S:g} s of the load's end ({len(dlq)} in all)",
            )
        )
        outcome.checks.append(
            Check(
                "good events land promptly",
                not missing_prompt,
                f"{len(missing_prompt)} of {len(set(good))} not readable {PROMPT_S:g} s "
                "after the load",
            )
        )
        # ... then everything else as usual (late events still count as
        # delivered; emitted counts the load's events and the poison's good
        # neighbours).
        await account(
            harness, case, services, outcome, good, recovery_s=case.recovery_s, since=since
        )


async def run_grpc(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    with harness.services(case) as services:
        answers: list[grpcinput.Answer] = []
        targets = {"query": services.query_target, "ingest": services.ingest_target}
        options = [("grpc.max_send_message_length", 4 * 1024 * 1024)]
        async with (
            grpc.aio.insecure_channel(targets["query"], options=options) as query,
            grpc.aio.insecure_channel(targets["ingest"], options=options) as ingest,
        ):
            channels = {"query": query, "ingest": ingest}
            for probe in grpcinput.probes():
                answers.append(await grpcinput.call(channels[probe.service], probe))
            healthy = {name: await grpcinput.serving(ch) for name, ch in channels.items()}
            still = await grpcinput.call(
                query,
                grpcinput.Probe(
                    "query",
                    grpcinput.QUERY,
                    "a good query afterwards",
                    b"\x0a\x0akubernetes",
                    frozenset({grpc.StatusCode.OK}),
                ),
            )
        wrong = [a for a in answers if not a.ok]
        outcome.details["grpc"] = {
            "probes": len(answers),
            "by_code": dict(Counter(a.code.name for a in answers)),
            "wrong": [
                {
                    "method": a.probe.method,
                    "what": a.probe.what,
                    "got": a.code.name,
                    "want": sorted(c.name for c in a.probe.expect),
                    "details": a.details[:200],
                }
                for a in wrong
            ],
            "health": healthy,
        }
        outcome.checks.append(
            Check(
                "the right status every time",
                not wrong,
                f"{len(answers) - len(wrong)} of {len(answers)} right"
                + (
                    "; wrong: "
                    + "; ".join(
                        f"{a.probe.method.rsplit('/', 1)[1]} {a.probe.what}: {a.code.name}"
                        for a in wrong[:6]
                    )
                    if wrong
                    else ""
                ),
            )
        )
        outcome.checks.append(
            Check(
                "healthy afterwards",
                all(healthy.values()) and still.ok and services.query.process.poll() is None,
                f"health {healthy}, a good query: {still.code.name}",
            )
        )


def _rss_and_fds(pids: Sequence[int]) -> tuple[int, int]:
    rss = fds = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


async def run_soak(
    harness: Harness, case: Case, outcome: Outcome, rate: float, quick: bool
) -> None:
    _, load_s, _ = _durations(case, quick)
    outcome.what = f"none, {load_s / 60:g} min at {rate:g} req/s"
    with harness.services(case) as services:
        since = datetime.now(UTC)
        samples: list[dict[str, Any]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(_SAMPLE_S):
                query_pid = services.query.process.pid
                query = _rss_and_fds([query_pid, *procs.descendants(query_pid)])
                ingest = _rss_and_fds([services.ingest.process.pid])
                samples.append(
                    {
                        "t": round(time.monotonic() - started, 1),
                        "query_rss": query[0],
                        "query_fds": query[1],
                        "ingest_rss": ingest[0],
                        "ingest_fds": ingest[1],
                    }
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = await _load(services.query_target, rate, load_s)
        stop.set()
        sampler.join()
        outcome.p99_during_ms = _p99_ms(result)
        ids = _merge_errors(outcome, result)
        warm = [s for s in samples if s["t"] >= load_s * SOAK_WARMUP_SHARE]
        outcome.details["soak"] = {"samples": samples}
        if len(warm) >= 2:
            for who in ("query", "ingest"):
                first, last = warm[0][f"{who}_rss"], warm[-1][f"{who}_rss"]
                growth = (last - first) / first if first else 0.0
                outcome.checks.append(
                    Check(
                        f"{who} RSS growth ≤ {SOAK_RSS_GROWTH:.0%} after warm-up",
                        growth <= SOAK_RSS_GROWTH,
                        f"{first / 2**20:.1f} → {last / 2**20:.1f} MiB ({growth:+.1%})",
                    )
                )
                # Open sockets come and go with the calls in flight, so one
                # sample against another says little: the most in the
                # second half against the most in the first half does.
                half = len(warm) // 2
                fds_first = max(s[f"{who}_fds"] for s in warm[:half])
                fds_last = max(s[f"{who}_fds"] for s in warm[half:])
                outcome.checks.append(
                    Check(
                        f"{who} no fd growth",
                        fds_last <= fds_first,
                        f"at most {fds_first} in the first half after warm-up, "
                        f"{fds_last} in the second",
                    )
                )
        else:
            outcome.error = "too few samples after warm-up"
        await account(
            harness, case, services, outcome, ids, recovery_s=case.recovery_s, since=since
        )


RUNNERS = {
    "load": run_load_case,
    "kill-query": run_kill_query,
    "kill-sender": run_kill_sender,
    "kill-ingest": run_kill_ingest,
    "poison": run_poison,
    "grpc": run_grpc,
    "soak": run_soak,
}


def run_case(harness: Harness, case: Case, *, rate: float, quick: bool) -> Outcome:
    """Run ``case``; an exception inside it is the case's failure, not the run's."""
    outcome = Outcome(
        case.name,
        case.what,
        case.spool,
        rate if case.kind != "grpc" else 0.0,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    started = time.monotonic()
    harness.shutdown_losses = {}
    try:
        asyncio.run(RUNNERS[case.kind](harness, case, outcome, rate, quick))
    except Exception as exc:  # a case that broke is reported, the rest still run
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.details["traceback"] = traceback.format_exc()
    else:
        _check_shutdown_report(case, outcome, harness.shutdown_losses)
    outcome.duration_s = round(time.monotonic() - started, 1)
    return outcome


# -- the table ------------------------------------------------------------------------------


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def row(outcome: Outcome) -> list[str]:
    ratio = outcome.p99_ratio
    p99 = (
        f"{outcome.p99_before_ms:.2f}→{outcome.p99_during_ms:.2f} ms x{ratio:.2f}"
        if ratio is not None
        and outcome.p99_before_ms is not None
        and outcome.p99_during_ms is not None
        else "-"
    )
    dropped = (
        "n/a (killed)"
        if outcome.dropped is None and outcome.delivered is not None
        else ", ".join(f"{k} {v}" for k, v in sorted((outcome.dropped or {}).items())) or "0"
    )
    if outcome.error:
        verdict = f"FAIL: {outcome.error}"
    elif outcome.passed:
        verdict = "ok"
    else:
        verdict = "FAIL: " + "; ".join(f"{c.name} ({c.detail})" for c in outcome.checks if not c.ok)
    load = f"{outcome.rate:g}/s" if outcome.rate else "-"
    injected = sum(outcome.proxy.get("stats", {}).get("injected", {}).values())
    what = f"{outcome.what} ({injected} injected)" if injected else outcome.what
    double = outcome.double_counted
    return [
        outcome.case,
        "on" if outcome.spool else "off",
        load,
        what,
        p99,
        str(outcome.emitted) if outcome.rate else "-",
        _n(outcome.delivered) if outcome.rate else "-",
        dropped if outcome.rate else "-",
        _n(outcome.spooled) if outcome.rate else "-",
        _n(outcome.lost) if outcome.rate else "-",
        _n(double) if outcome.rate else "-",
        _n(outcome.dead_lettered) if outcome.rate else "-",
        verdict,
    ]


HEADER = [
    "case",
    "spool",
    "load",
    "fault",
    "Query p99 before→during",
    "emitted",
    "delivered",
    "dropped",
    "spooled",
    "lost",
    "double",
    "DLQ",
    "verdict",
]


def table(outcomes: Sequence[Outcome]) -> str:
    """The rows as a Markdown table (readable as printed, pasteable as is)."""
    rows = [HEADER, *(row(o) for o in outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False)]
        return "| " + " | ".join([*padded, cells[-1]]) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|---|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + ("+changes" if dirty else "")


def run(
    cases: Sequence[Case],
    *,
    rate: float,
    quick: bool,
    out: Path,
    soak_rate: float = SOAK_RATE,
    progress: Callable[[str], None] = lambda text: None,
) -> list[Outcome]:
    """Run ``cases`` in order on one endpoint; the outcomes, also written to
    ``out/faults.json``."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with Harness(out) as harness:
        for case in cases:
            case_rate = soak_rate if case.kind == "soak" else rate
            progress(f"{case.name}: {case.what} ...")
            outcome = run_case(harness, case, rate=case_rate, quick=quick)
            outcomes.append(outcome)
            progress(
                f"{case.name}: {'ok' if outcome.passed else 'FAIL'} in {outcome.duration_s:g} s"
            )
            _write(out, outcomes, quick=quick, rate=rate)
    return outcomes


def _write(out: Path, outcomes: Sequence[Outcome], *, quick: bool, rate: float) -> None:
    data = {
        "commit": _commit(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "rate": rate,
        "p99_rule": {"ratio": P99_RATIO_LIMIT, "slack_ms": P99_SLACK_MS},
        "cases": [o.to_json() for o in outcomes],
    }
    (out / "faults.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=sorted(BY_NAME),
        metavar="CASE",
        help=f"run these only (default: all but soak): {', '.join(BY_NAME)}",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds of each fault")
    parser.add_argument(
        "--soak", action="store_true", help="add the soak: 10 minutes at 200 req/s (1 with --quick)"
    )
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="offered load, req/s (at most 100)"
    )
    parser.add_argument(
        "--soak-rate", type=float, default=SOAK_RATE, help="the soak's load, req/s (at most 200)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= DEFAULT_RATE:
        parser.error(f"--rate must be above 0 and at most {DEFAULT_RATE:g}")
    if not 0 < args.soak_rate <= SOAK_RATE:
        parser.error(f"--soak-rate must be above 0 and at most {SOAK_RATE:g}")
    cases = [BY_NAME[n] for n in args.cases] if args.cases else list(CASES)
    if args.soak and SOAK not in cases:
        cases.append(SOAK)
    configure_logging("faults", "warning")
    out = args.out or RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    outcomes = run(
        cases,
        rate=args.rate,
        quick=args.quick,
        out=out,
        soak_rate=args.soak_rate,
        progress=progress,
    )
    print(table(outcomes))
    print(
        f"\n{sum(o.passed for o in outcomes)} of {len(outcomes)} cases kept their promise "
        f"({'quick' if args.quick else 'full'} run, commit {_commit()}, "
        f"{time.monotonic() - started:.0f} s); details: {out / 'faults.json'}"
    )
    sys.exit(0 if all(o.passed for o in outcomes) else 1)
