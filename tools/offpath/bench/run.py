"""The benchmark: the performance contract as cells, each printed with its
goal and met / missed, from rounds run side by side in one run.

``python -m offpath.bench [--profile full|quick|smoke]`` (``make bench``,
``make bench-quick``). For each CPU mode (``pinned``: QueryService alone on
core 0, everything else on the other cores; ``unpinned``: nothing pinned)
it starts the local AWS endpoint and AnalyticsIngest at the lowest OS
priority (nice 19), then runs phases of rounds. Each round runs every
variant of its phase once, a fresh server each time, in an order rotated
from round to round; a figure is a ratio within a round (a variant against
``off``), and what is reported is the median over rounds.

Phases: ``latency`` (open loop at 200 req/s: the product, each sender, SQS
100 ms slow, SQS unreachable), ``max_qps`` (closed loop, a fixed number in
flight), ``at_max`` (open loop at 80 % of analytics-off's measured maximum),
``contrast`` (blocking analytics beside off, at a rate the local endpoint
absorbs one SQS call per request at), and, unpinned, ``workers`` (closed
loop over several connections: 1 worker against 2, analytics off and
background; a figure without a goal). ``--phases`` runs some of them only.

The load generator measures itself (sends started late, its own loop lag
and CPU), and the server's core is watched for work that is not ours: a run
disturbed either way is kept in the JSON and left out of the latency cells,
with the count shown. Results: ``bench-results/<time>/bench.json`` and
``bench.svg``; ``python -m offpath.bench.readme`` writes the README table
from a bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import grpc
from botocore.exceptions import BotoCoreError, ClientError

from offpath.bench import procs
from offpath.bench.goals import CORE_SHARED, GENERATOR_LATE, GENERATOR_SATURATED
from offpath.bench.plan import (
    BASELINE,
    PHASE_NAMES,
    PROFILES,
    VARIANTS,
    Phase,
    Profile,
    Variant,
)
from offpath.bench.plot import write_svg
from offpath.bench.report import cells_for_mode, figures_for_mode, summarize, table
from offpath.bench.stats import median, rotated
from offpath.client import OffpathClient
from offpath.client.load import (
    KEPT_UP_SHARE,
    LATE_NS,
    ClosedLoopResult,
    LoadResult,
    Mark,
    histogram,
    percentile,
    run_closed_loop,
    run_load,
)
from offpath.dev.stack import DevStack, StartError
from offpath.emitter.settings import ENV_SENDER
from offpath.kit.logs import read_log

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# Other work on the serving core above this share of the window disturbs a run.
FOREIGN_SHARE_LIMIT = 0.10
HELPER_NICE = 19
SERVER_LOOP_LAG_SAMPLE_MS = "5"


def configured_sender() -> str | None:
    """The sender the emitter's settings name when OFFPATH_EMIT_SENDER is not
    set (None when they do not say). The servers' own logs are the better
    witness: see :meth:`ModeRunner._learn_default`."""
    if value := os.environ.get(ENV_SENDER):
        return value
    try:
        from offpath.emitter.settings import EmitterSettings
    except ImportError:
        return None
    sender = getattr(EmitterSettings(), "sender", None)
    return sender if isinstance(sender, str) else None


_Reading = tuple[procs.TreeSnapshot, procs.CoreTimes, dict[int, tuple[int, bool]]]


@dataclass
class _Window:
    """CPU readings at the start and end of the measured part of a run."""

    root: int
    tree: list[int]
    ours: list[int]
    serving: frozenset[int]
    before: _Reading | None = None
    after: _Reading | None = None

    def _read(self) -> _Reading:
        # Our other processes (the bench, the helpers): CPU and whether they
        # may run on the serving cores.
        ours = {
            pid: (cpu, bool(procs.affinity(pid) & self.serving))
            for pid in self.ours
            if (cpu := procs.process_cpu_ns(pid)) is not None
        }
        return procs.snapshot_tree(self.root, pids=self.tree), procs.core_times(), ours

    def mark(self, what: str) -> None:
        if what == "measure_start":
            self.before = self._read()
        else:
            # A sender process started late is counted from zero.
            self.tree = [self.root, *procs.descendants(self.root)]
            self.after = self._read()

    def summary(
        self, events: int, workers: Sequence[int] = ()
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(CPU of the server's tree, other work on the serving cores);
        ``workers``: the pids of a supervisor's workers, whose own CPU (their
        sender processes aside) is given each as a share of one core."""
        if self.before is None or self.after is None:
            return {}, {}
        (tree0, cores0, ours0), (tree1, cores1, ours1) = self.before, self.after
        usage = procs.tree_usage(tree0, tree1, self.serving)
        wall = usage.wall_ns or 1
        per = max(events, 1) * 1000  # ns -> µs per event
        worker_shares = []
        for pid in workers:
            start, end = tree0.processes.get(pid), tree1.processes.get(pid)
            if start is not None and end is not None:
                worker_shares.append(round((end.cpu_ns - start.cpu_ns) / wall, 3))

        cpu = {
            "events": events,
            "wall_s": round(wall / 1e9, 3),
            "serving_ns": usage.serving_ns,
            "total_ns": usage.total_ns,
            "serving_us_per_event": round(usage.serving_ns / per, 2),
            "total_us_per_event": round(usage.total_ns / per, 2),
            "main_thread_us_per_event": round(usage.root_main_ns / per, 2),
            "other_threads_us_per_event": round(usage.root_other_ns / per, 2),
            "children_us_per_event": round(usage.children_ns / per, 2),
            "children_serving_us_per_event": round(usage.children_serving_ns / per, 2),
            "child_cpus": {str(pid): cores for pid, cores in usage.child_cpus.items()},
            "threads_us_per_event": {
                name: round(ns / per, 2) for name, ns in sorted(usage.by_thread_name.items())
            },
            "serving_busy_share": round(usage.serving_ns / (wall * len(self.serving)), 3),
        }
        if worker_shares:
            cpu["worker_busy_shares"] = worker_shares
        # Ours on the serving cores: every process we started that may run there.
        ours_serving = 0
        for pid, (now, on_serving) in ours1.items():
            if pid in ours0 and on_serving:
                ours_serving += now - ours0[pid][0]
        for pid, process in tree1.processes.items():
            if pid not in ours1 and process.cpus & self.serving:
                then = tree0.processes.get(pid)
                ours_serving += process.cpu_ns - (then.cpu_ns if then else 0)
        busy, steal = procs.busy_between(cores0, cores1, self.serving)
        capacity = wall * len(self.serving)
        machine = {
            "serving_busy_share": round(busy / capacity, 3),
            "foreign_serving_share": round(max(0, busy - ours_serving) / capacity, 3),
            "steal_share": round(steal / capacity, 3),
        }
        return cpu, machine


def _latency(values_ns: list[int]) -> dict[str, Any]:
    values = sorted(values_ns)
    ms = {f"p{q:g}": round(percentile(values, q) / 1e6, 3) for q in (50, 90, 99, 99.9)}
    return {
        **ms,
        "max": round(values[-1] / 1e6, 3) if values else None,
        "measured": len(values),
        "histogram_ms": histogram(values_ns),
    }


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition to {name: value}, counters without their
    ``_total`` suffix, labelled samples summed."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0].removesuffix("_total")
        with contextlib.suppress(ValueError):
            found[name] = found.get(name, 0.0) + float(value)
    return found


def _scrape(port: int | None) -> dict[str, float]:
    """The server's metrics (empty when it has none to offer)."""
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
            return parse_metrics(reply.read().decode())
    except OSError:
        return {}


def _last(records: list[dict[str, Any]], event: str) -> dict[str, Any] | None:
    matching = [r for r in records if r.get("event") == event]
    return matching[-1] if matching else None


def _per_worker(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each worker's loop lag p99 and emitter counters, from a supervisor's
    log (every worker's line says which worker wrote it)."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        worker = record.get("worker")
        if worker is None or isinstance(worker, bool):
            continue
        if record.get("event") == "loop_lag":
            found.setdefault(str(worker), {})["loop_lag_p99_ms"] = record.get("p99_ms")
        elif record.get("event") == "emitter_stopped":
            found.setdefault(str(worker), {}).update(
                {k: record[k] for k in ("enqueued", "sent", "dropped") if k in record}
            )
    return dict(sorted(found.items()))


def _freshness(client: OffpathClient, event_ids: list[str], sample: int) -> dict[str, Any]:
    """Reply-to-stored delay: ingested_at minus (occurred_at + processing_time),
    over a sample of the run's events spread across it."""
    step = max(1, len(event_ids) // max(sample, 1))
    delays: list[int] = []
    missing = 0
    for event_id in event_ids[::step][:sample]:
        try:
            stored = client.wait_for_event(event_id, timeout=10)
        except grpc.RpcError:
            missing += 1
            continue
        replied = (
            stored.event.occurred_at.ToNanoseconds() + stored.event.processing_time.ToNanoseconds()
        )
        delays.append(stored.ingested_at.ToNanoseconds() - replied)
    delays.sort()
    return {
        "sampled": len(delays) + missing,
        "missing": missing,
        "p50_s": round(percentile(delays, 50) / 1e9, 4) if delays else None,
        "p99_s": round(percentile(delays, 99) / 1e9, 4) if delays else None,
        "max_s": round(delays[-1] / 1e9, 4) if delays else None,
    }


def _load_fields(load: LoadResult | ClosedLoopResult) -> dict[str, Any]:
    """What the generator saw, and what it says about itself."""
    if isinstance(load, ClosedLoopResult):
        return {
            "qps": round(load.qps, 1),
            "latency_ms": _latency(load.latencies_ns),
            "errors": dict(load.errors),
            "generator": {
                "concurrency": load.concurrency,
                "channels": load.channels,
                "cpu_share": round(load.cpu_share, 3),
                "saturated": load.saturated,
            },
        }
    delays = sorted(load.start_delays_ns)
    lag = load.loop_lag
    return {
        "rate": load.rate,
        "latency_ms": _latency(load.latencies_ns),
        "errors": dict(load.errors),
        "generator": {
            "sends": load.sends,
            "late_starts": load.late_starts,
            "late_share": round(load.late_share, 4),
            "late_threshold_ms": LATE_NS / 1e6,
            "server_kept_up_share": round(load.kept_up_share, 4),
            "start_delay_ms": {
                "p50": round(percentile(delays, 50) / 1e6, 3) if delays else None,
                "p99": round(percentile(delays, 99) / 1e6, 3) if delays else None,
                "max": round(delays[-1] / 1e6, 3) if delays else None,
            },
            "loop_lag": lag.as_dict() if lag is not None else None,
            "cpu_share": round(load.cpu_s / load.wall_s, 3) if load.wall_s else None,
        },
    }


def _sqs_fields(counters: dict[str, float], emitter: dict[str, Any]) -> dict[str, Any] | None:
    """SQS requests per event sent: from /metrics scraped before shutdown (the
    drain's last partial batch left out), else from ``emitter_stopped``."""
    sent = counters.get("offpath_emitter_events_sent")
    requests = counters.get("offpath_emitter_sqs_requests")
    source = "metrics"
    if not sent and emitter.get("sent"):
        sent, requests, source = emitter.get("sent"), emitter.get("requests"), "log"
    if not sent or requests is None:
        return None
    return {
        "sent": sent,
        "requests": requests,
        "per_1000_events": round(1000 * requests / sent, 3),
        "source": source,
    }


def start_failure(error: StartError) -> str:
    """The one line that says why a server did not start."""
    lines = [line for line in str(error).splitlines()[1:] if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    if plain:
        return plain[-1].strip()
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("error"):
                return str(record["error"])
    return str(error).splitlines()[0]


class ModeRunner:
    """Runs every phase of one CPU mode on one stack."""

    def __init__(
        self,
        mode: str,
        profile: Profile,
        phases: tuple[Phase, ...],
        log_dir: Path,
        serving: frozenset[int],
        others: frozenset[int],
    ) -> None:
        self.mode = mode
        self.profile = profile
        self.phases = phases
        self.log_dir = log_dir
        self.serving = serving
        self.others = others
        self.unavailable: dict[str, str] = {}
        self.duplicates: dict[str, str] = {}
        # What "background" really used, from its log (the settings' default
        # until a background server has said).
        self.default_sender = configured_sender()
        self._ran: set[str] = set()
        self.stack = DevStack(
            aws_port=0,
            ingest_port=0,
            env={"OFFPATH_INGEST_WAIT_S": "1"},
            log_dir=log_dir,
            cpus=set(others),
            nice=HELPER_NICE,
        )
        self._client: OffpathClient | None = None
        self._seq = 0

    def run(self) -> dict[str, Any]:
        os.sched_setaffinity(0, self.others)  # this process is the load generator
        started = time.monotonic()
        self.stack.start(("local-aws", "ingest"))
        phases: dict[str, Any] = {}
        try:
            with OffpathClient(ingest_target=self.stack.ingest_target) as client:
                self._client = client
                for phase in self.phases:
                    basis = None
                    if phase.name == "at_max":
                        at_max = self._at_max_rate(phase, phases.get("max_qps"))
                        if at_max is None:
                            continue
                        phase, basis = at_max
                    phases[phase.name] = self._phase(phase)
                    if basis is not None:
                        phases[phase.name]["rate_basis"] = basis
        finally:
            self.stack.stop()
        return {
            "serving_cpus": sorted(self.serving),
            "other_cpus": sorted(self.others),
            "helpers_nice": HELPER_NICE,
            "generator_nice": os.getpriority(os.PRIO_PROCESS, 0),
            "default_sender": self.default_sender,
            "unavailable": self.unavailable,
            "duplicates": self.duplicates,
            "phases": phases,
            "elapsed_s": round(time.monotonic() - started, 1),
        }

    def _at_max_rate(
        self, phase: Phase, max_qps: dict[str, Any] | None
    ) -> tuple[Phase, str] | None:
        """The at_max phase at the profile's fraction of off's median maximum
        (of the undisturbed rounds; of every round when none was)."""
        if max_qps is None:
            return None
        runs = [rnd["runs"][BASELINE] for rnd in max_qps["rounds"] if BASELINE in rnd["runs"]]
        undisturbed = [r["qps"] for r in runs if r.get("qps") and not r.get("disturbed")]
        basis = "undisturbed rounds" if undisturbed else "disturbed rounds only"
        base = median(undisturbed or [r.get("qps") for r in runs])
        if not base:
            print(f"[{self.mode}] at_max: no maximum measured for off; skipped", file=sys.stderr)
            return None
        rate = round(self.profile.at_max_fraction * base)
        return replace(
            phase, rate=rate
        ), f"{self.profile.at_max_fraction:g} of {base:.0f} req/s ({basis})"

    def _phase(self, phase: Phase) -> dict[str, Any]:
        rounds = []
        for index in range(self.profile.rounds):
            names = [n for n in phase.variants if n not in self.duplicates]
            order = rotated(names, index)
            runs: dict[str, Any] = {}
            for name in order:
                if name in self.unavailable or name in self.duplicates:
                    continue
                run = self._run(phase, index, VARIANTS[name])
                if run is not None:
                    runs[name] = run
            rounds.append({"order": order, "runs": runs})
        return {
            "rate": phase.rate,
            "concurrency": phase.concurrency,
            "channels": phase.channels,
            "warmup_s": phase.warmup_s,
            "duration_s": phase.duration_s,
            "variants": list(phase.variants),
            "rounds": rounds,
        }

    def _run(self, phase: Phase, index: int, variant: Variant) -> dict[str, Any] | None:
        self._seq += 1
        name = f"{self._seq:03d}-{phase.name}-{variant.name}"
        env = {
            **self.stack.aws_env(),
            **variant.env,
            "OFFPATH_QUERY_PORT": "0",
            "OFFPATH_QUERY_METRICS_PORT": "0",
            "OFFPATH_PRODUCER_ID": f"bench-{self.mode}-{self._seq}-{variant.name}",
            "OFFPATH_LOOP_LAG_SAMPLE_MS": SERVER_LOOP_LAG_SAMPLE_MS,
        }
        scratch = None
        if not phase.keep_events and (variant.analytics or variant.delivers):
            scratch = self._scratch_queue(f"offpath-bench-scratch-{self._seq}.fifo")
            if scratch is not None:
                env["OFFPATH_SQS_QUEUE_NAME"] = scratch[0]
                env.pop("OFFPATH_SQS_QUEUE_URL", None)
        what = f"{phase.concurrency} in flight" if phase.closed else f"{phase.rate:g} req/s"
        if phase.closed and phase.channels > 1:
            what += f" over {phase.channels} connections"
        if variant.workers > 1:
            what += f", {variant.workers} workers"
        print(
            f"[{self.mode}] {phase.name} round {index + 1}/{self.profile.rounds} "
            f"{variant.name}: {what}, {phase.warmup_s:g}+{phase.duration_s:g} s",
            file=sys.stderr,
            flush=True,
        )
        proxy_name = f"{name}-proxy"
        clock = [time.monotonic()]  # start, serving, loaded, stopped, settled
        try:
            if variant.proxy is not None:
                proxy = self.stack.spawn(
                    proxy_name,
                    "offpath.dev.proxy",
                    {},
                    args=(
                        "--upstream",
                        f"127.0.0.1:{self.stack.port('local-aws')}",
                        *variant.proxy,
                    ),
                    cpus=set(self.others),
                    nice=HELPER_NICE,
                )
                env["AWS_ENDPOINT_URL_SQS"] = f"http://127.0.0.1:{proxy.port}"
            server = self.stack.spawn(name, variant.module, env, cpus=set(self.serving))
        except StartError as exc:
            self.unavailable[variant.name] = start_failure(exc)
            print(f"  not available: {self.unavailable[variant.name]}", file=sys.stderr)
            with contextlib.suppress(KeyError):
                self.stack.stop_child(proxy_name)
            return None
        pid = server.process.pid
        if variant.sender_on_serving_cores:
            for child in procs.descendants(pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(child, self.serving)
        helpers = [c.process.pid for c in self.stack.children.values() if c.process.poll() is None]
        window = _Window(
            root=pid,
            tree=[pid, *procs.descendants(pid)],
            ours=[os.getpid(), *(p for p in helpers if p != pid)],
            serving=self.serving,
        )
        clock.append(time.monotonic())
        with self._ingest_paused(phase.pause_ingest):
            load = self._load(phase, f"127.0.0.1:{server.port}", window.mark)
        clock.append(time.monotonic())
        counters = _scrape(server.metrics_port)
        code = self.stack.stop_child(name)
        if variant.proxy is not None:
            self.stack.stop_child(proxy_name)
        if scratch is not None:
            self._drop_queue(scratch[1])
        clock.append(time.monotonic())

        log_path = self.log_dir / f"{name}.log"
        records = read_log(log_path) if log_path.exists() else []
        events = (
            load.sends
            if isinstance(load, LoadResult)
            else load.completed + sum(load.errors.values())
        )
        started = _last(records, "server_started") or {}
        worker_pids = [p for p in started.get("worker_pids", []) if isinstance(p, int)]
        cpu, machine = window.summary(events, worker_pids)
        disturbances = self._disturbances(load, machine)
        run: dict[str, Any] = {
            "server_log": log_path.name,
            "exit_code": code,
            **_load_fields(load),
            "disturbed": disturbances[0] if disturbances else None,
            "disturbances": disturbances,
            "cpu": cpu,
            "machine": machine,
            "server": self._server_fields(records, variant, cpu),
        }
        if (workers := run["server"]["workers"]) != variant.workers:
            print(
                f"  WARNING: {variant.name} served with {workers} worker(s), not {variant.workers}",
                file=sys.stderr,
            )
        self._ran.add(variant.name)
        if variant.name == "background":
            self._learn_default(run["server"].get("emitter", {}).get("sender"))
        if (sqs := _sqs_fields(counters, run["server"].get("emitter") or {})) is not None:
            run["sqs"] = sqs
        if (
            isinstance(load, LoadResult)
            and variant.delivers
            and load.event_ids
            and phase.keep_events
        ):
            assert self._client is not None
            if variant.freshness and phase.name == "freshness":
                run["freshness"] = _freshness(
                    self._client, load.event_ids, self.profile.freshness_sample
                )
            self._settle(load.event_ids[-1])
        clock.append(time.monotonic())
        run["timing_s"] = {
            step: round(end - begin, 2)
            for step, begin, end in zip(
                ("start", "load", "stop", "settle"), clock, clock[1:], strict=False
            )
        }
        self._describe(run)
        return run

    @staticmethod
    def _load(phase: Phase, target: str, mark: Mark) -> LoadResult | ClosedLoopResult:
        if phase.closed:
            return asyncio.run(
                run_closed_loop(
                    target,
                    concurrency=phase.concurrency,
                    duration_s=phase.duration_s,
                    warmup_s=phase.warmup_s,
                    mark=mark,
                    channels=phase.channels,
                )
            )
        return asyncio.run(
            run_load(
                target,
                rate=phase.rate,
                duration_s=phase.duration_s,
                warmup_s=phase.warmup_s,
                mark=mark,
            )
        )

    def _disturbances(
        self, load: LoadResult | ClosedLoopResult, machine: dict[str, Any]
    ) -> list[str]:
        """Why this run may not be evidence about the server (most telling first)."""
        found = []
        if machine.get("foreign_serving_share", 0) > FOREIGN_SHARE_LIMIT:
            found.append(CORE_SHARED)
        # A late generator whose server did not keep up was late because of
        # the server: that run is evidence against the server, not disturbed.
        if isinstance(load, LoadResult) and load.late and load.kept_up:
            found.append(GENERATOR_LATE)
        if isinstance(load, ClosedLoopResult) and load.saturated:
            found.append(GENERATOR_SATURATED)
        return found

    def _server_fields(
        self, records: list[dict[str, Any]], variant: Variant, cpu: dict[str, Any]
    ) -> dict[str, Any]:
        started = _last(records, "server_started") or {}
        workers = started.get("workers", 1)
        fields: dict[str, Any] = {"workers": workers if isinstance(workers, int) else 1}
        if fields["workers"] > 1:
            # Each worker logs its own loop lag and emitter: one per worker,
            # none of them the server's.
            fields["worker_pids"] = started.get("worker_pids", [])
            fields["per_worker"] = _per_worker(records)
            return fields
        if (lag := _last(records, "loop_lag")) is not None:
            fields["loop_lag"] = {k: lag.get(k) for k in ("samples", "p50_ms", "p99_ms", "max_ms")}
        if (stopped := _last(records, "emitter_stopped")) is not None:
            fields["emitter"] = {
                k: stopped[k]
                for k in (
                    "enqueued",
                    "sent",
                    "requests",
                    "retries",
                    "dropped",
                    "sender",
                    "loop_slice_max_us",
                    "sender_burst_max_us",
                    "burst_max_us",
                    "sender_pid",
                    "sender_restarts",
                    "spooled",
                    "cpu_s",
                )
                if k in stopped
            }
        if (child := _last(records, "sender_stopped")) is not None:
            fields["sender_stopped"] = {
                k: child[k] for k in ("burst_max_us", "cpu_s", "pid") if k in child
            }
        if variant.analytics and "emitter" in fields:
            fields["burst"] = self._burst(fields, variant, cpu)
        return fields

    def _burst(
        self, fields: dict[str, Any], variant: Variant, cpu: dict[str, Any]
    ) -> dict[str, Any]:
        """The longest piece of analytics work on the serving core: the
        emitter's longest slice on the event loop, and the sender's longest
        burst when the sender may run on the serving core (a thread always
        does; a process where its affinity allows)."""
        emitter = fields["emitter"]
        child = fields.get("sender_stopped", {})
        sender = emitter.get("sender") or variant.sender or self.default_sender or "?"
        loop_us = emitter.get("loop_slice_max_us")
        sender_us = next(
            (
                v
                for v in (
                    child.get("burst_max_us"),
                    emitter.get("sender_burst_max_us"),
                    emitter.get("burst_max_us"),
                )
                if v is not None
            ),
            None,
        )
        if sender == "process":
            pid = emitter.get("sender_pid", child.get("pid"))
            cores = cpu.get("child_cpus", {})
            allowed = cores.get(str(pid)) if pid is not None else None
            if allowed is None and len(cores) == 1:
                allowed = next(iter(cores.values()))
            on_serving = allowed is None or bool(set(allowed) & self.serving)
        else:
            on_serving = True
        parts = {"loop_slice_max_us": loop_us}
        if on_serving:
            parts["sender_burst_max_us"] = sender_us
        known = [v for v in parts.values() if v is not None]
        missing = [k for k, v in parts.items() if v is None]
        result: dict[str, Any] = {
            "sender": sender,
            "sender_on_serving_core": on_serving,
            "loop_slice_max_us": loop_us,
            "sender_burst_max_us": sender_us,
            # The worst known piece; a lower bound when a part is missing.
            "max_ms": round(max(known) / 1000, 4) if known else None,
            "complete": not missing,
        }
        if missing:
            result["missing"] = f"the {sender} emitter does not log {', '.join(missing)}"
        return result

    def _learn_default(self, sender: object) -> None:
        """Once "background" has said which sender it used, the variant naming
        that sender measures the same server again: skip it (unless it already
        ran, so its rounds stay complete)."""
        if not isinstance(sender, str):
            return
        self.default_sender = sender
        for name, variant in VARIANTS.items():
            if variant.sender == sender and name not in self._ran:
                self.duplicates[name] = f"same as background (its default sender is {sender})"

    @contextlib.contextmanager
    def _ingest_paused(self, pause: bool) -> Iterator[None]:
        """SIGSTOP AnalyticsIngest for the measured load (see Phase.pause_ingest);
        it resumes afterwards and drains what queued meanwhile."""
        process = self.stack.children["ingest"].process
        if not pause or process.poll() is not None:
            yield
            return
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.send_signal(signal.SIGCONT)

    def _sqs(self) -> SQSClient:
        env = self.stack.aws_env()
        client: SQSClient = boto3.client(
            "sqs",
            region_name=env["AWS_REGION"],
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        return client

    def _scratch_queue(self, name: str) -> tuple[str, str] | None:
        """A queue of the run's own, which nothing reads (see Phase.keep_events):
        its name and URL, or None (the run then uses the events queue)."""
        try:
            url = self._sqs().create_queue(
                QueueName=name,
                Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"},
            )["QueueUrl"]
        except (BotoCoreError, ClientError) as exc:
            print(f"  could not create a scratch queue: {exc}", file=sys.stderr)
            return None
        return name, url

    def _drop_queue(self, url: str) -> None:
        try:
            self._sqs().delete_queue(QueueUrl=url)
        except (BotoCoreError, ClientError) as exc:
            print(f"  could not delete the scratch queue: {exc}", file=sys.stderr)

    def _settle(self, last_event_id: str) -> None:
        """Wait until the run's last event is readable, so the ingest side has
        finished its work before the next run starts."""
        assert self._client is not None
        with contextlib.suppress(grpc.RpcError):
            self._client.wait_for_event(last_event_id, timeout=self.profile.settle_timeout_s)

    @staticmethod
    def _describe(run: dict[str, Any]) -> None:
        lat = run.get("latency_ms", {})
        parts = [f"p50 {lat.get('p50')} p99 {lat.get('p99')} ms"]
        if "qps" in run:
            parts.insert(0, f"{run['qps']:.0f} req/s")
        if gen := run.get("generator"):
            if "late_share" in gen:
                parts.append(f"late {100 * gen['late_share']:.1f} %")
            parts.append(f"generator cpu {gen.get('cpu_share')}")
        if shares := run.get("cpu", {}).get("worker_busy_shares"):
            parts.append("workers busy " + "/".join(f"{v:.2f}" for v in shares))
        if gen and gen.get("server_kept_up_share", 1) < KEPT_UP_SHARE:
            parts.append(
                f"server answered {100 * gen['server_kept_up_share']:.0f} % of the offered rate"
            )
        if run.get("disturbed"):
            parts.append(f"DISTURBED: {run['disturbed']}")
        print("  " + ", ".join(parts), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="offpath-bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="full",
        help="full (make bench), quick (make bench-quick), smoke (the end-to-end test)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per phase (the profile's otherwise)")
    parser.add_argument("--rate", type=float, help="req/s of the latency phase (default 200)")
    parser.add_argument(
        "--modes",
        help="pinned and/or unpinned, comma-separated (default: pinned, plus unpinned when "
        "the profile has unpinned phases; unpinned alone on a single core)",
    )
    parser.add_argument(
        "--phases",
        help=f"only these of the profile's phases, comma-separated ({', '.join(PHASE_NAMES)}); "
        "e.g. --profile full --phases workers",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile].with_overrides(rounds=args.rounds, rate=args.rate)
    if profile.rounds < 1:
        parser.error("--rounds must be at least 1")
    only: list[str] | None = None
    if args.phases:
        only = [p for p in args.phases.split(",") if p]
        if unknown := [p for p in only if p not in PHASE_NAMES]:
            parser.error(f"--phases: no phase {', '.join(unknown)}")
        profile = profile.only(only)
    cores = sorted(os.sched_getaffinity(0))
    if args.modes:
        modes = [m for m in args.modes.split(",") if m]
        if any(m not in ("pinned", "unpinned") for m in modes):
            parser.error("--modes takes pinned and/or unpinned")
    elif len(cores) < 2:
        modes = ["unpinned"]
    else:
        modes = ["pinned", *(["unpinned"] if profile.unpinned_phases else [])]
    if "pinned" in modes and len(cores) < 2:
        parser.error("pinned mode needs at least 2 cores; use --modes unpinned")
    # The primary mode runs the profile's phases; a second mode, the
    # profile's unpinned selection. A mode left with none does not run.
    plan = [
        (mode, profile.phases if index == 0 else profile.unpinned_phases)
        for index, mode in enumerate(modes)
    ]
    plan = [(mode, phases) for mode, phases in plan if phases]
    if not plan:
        parser.error(f"--phases {args.phases}: none of them runs in mode(s) {', '.join(modes)}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": stamp,
        "profile": profile.name,
        "rounds": profile.rounds,
        "machine": {
            "cpus": len(cores),
            "python": sys.version.split()[0],
            "grpcio": grpc.__version__,
        },
        "modes": {},
    }
    if only is not None:
        report["only_phases"] = only
    started = time.monotonic()
    cells: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    for mode, phases in plan:
        all_cores = frozenset(cores)
        if mode == "pinned":
            serving, others = frozenset({cores[0]}), all_cores - {cores[0]}
        else:
            serving = others = all_cores
        runner = ModeRunner(mode, profile, phases, run_dir / "logs" / mode, serving, others)
        result = runner.run()
        result["summary"] = summarize(result)
        report["modes"][mode] = result
        cells.extend(cell.as_dict() for cell in cells_for_mode(mode, result))
        figures.extend(figure.as_dict() for figure in figures_for_mode(mode, result))
    report["cells"] = cells
    report["figures"] = figures
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    (run_dir / "bench.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_svg(report, run_dir / "bench.svg")
    print(table(report))
    print(f"\nresults: {run_dir / 'bench.json'}  chart: {run_dir / 'bench.svg'}")


if __name__ == "__main__":
    main()
