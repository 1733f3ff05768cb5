"""Unit tests for offpath.query.supervisor: each worker's plan (port, producer id, metrics
port, spool), the restart decisions, the pod's metrics, and the lifecycle with stand-in
workers (small scripts speaking the real status protocol, no gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from offpath.emitter import EmitterSettings
from offpath.kit.backoff import Backoff
from offpath.kit.server import StartupError
from offpath.kit.settings import ServerSettings
from offpath.query.settings import QuerySettings
from offpath.query.supervisor import (
    Outcome,
    RestartPolicy,
    Supervisor,
    WorkerMetrics,
    WorkerPlan,
    WorkersView,
    plan_workers,
    worker_producer_id,
)

TIMEOUT_S = 15.0  # generous: each wait here normally ends well within a second


def _settings(workers: int = 2, *, spool_dir: str | None = None) -> QuerySettings:
    return QuerySettings(
        server=ServerSettings(
            host="127.0.0.1", port=0, metrics_port=0, grace_s=0.0, loop_lag_sample_ms=0
        ),
        analytics="off",
        catalog_path=None,
        emitter=EmitterSettings(producer_id="pod-7", drain_timeout_s=0.0, spool_dir=spool_dir),
        workers=workers,
    )


# -- the plan ------------------------------------------------------------------------------


def test_each_worker_shares_the_port_and_has_its_own_producer_id_and_metrics_port() -> None:
    """Every worker binds the supervisor's port, takes a free metrics port (the supervisor
    serves the configured one), runs as one process, and has producer id <producer>-w<i>;
    the rest of the environment is passed through."""
    env = {"OFFPATH_QUERY_PORT": "0", "OFFPATH_QUERY_WORKERS": "3", "AWS_REGION": "eu-west-1"}
    plans = plan_workers(_settings(3), env, 40123)
    assert [p.index for p in plans] == [0, 1, 2]
    assert [p.producer_id for p in plans] == ["pod-7-w0", "pod-7-w1", "pod-7-w2"]
    for plan in plans:
        assert plan.env["OFFPATH_QUERY_PORT"] == "40123"
        assert plan.env["OFFPATH_QUERY_METRICS_PORT"] == "0"
        assert plan.env["OFFPATH_QUERY_WORKERS"] == "1"
        assert plan.env["OFFPATH_PRODUCER_ID"] == plan.producer_id
        assert plan.env["AWS_REGION"] == "eu-west-1"
        assert "OFFPATH_EMIT_SPOOL_DIR" not in plan.env
    assert env["OFFPATH_QUERY_PORT"] == "0", "the supervisor's own environment is unchanged"


def test_with_a_spool_each_worker_gets_a_directory_of_its_own(tmp_path: Path) -> None:
    """Two live senders never share a spool directory: worker i spools to <dir>/w<i>."""
    plans = plan_workers(_settings(2, spool_dir=str(tmp_path)), {}, 1)
    assert [p.env["OFFPATH_EMIT_SPOOL_DIR"] for p in plans] == [
        str(tmp_path / "w0"),
        str(tmp_path / "w1"),
    ]


def test_producer_id_keeps_its_worker_suffix_within_the_group_id_limit() -> None:
    """A 128-character producer id loses characters from its base, never its -w<i>
    suffix, and stays within a MessageGroupId's 128."""
    produced = worker_producer_id("p" * 128, 12)
    assert produced.endswith("-w12")
    assert len(produced) == 128
    assert worker_producer_id("short", 0) == "short-w0"


# -- restart decisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "served", "stopping", "service_started", "expected"),
    [
        (2, False, False, False, Outcome.STARTUP_FAILED),  # cannot start: none can
        (2, False, False, True, Outcome.RESTART),  # the service serves: retry this one
        (2, True, False, False, Outcome.RESTART),  # it served: not a start-up error
        (1, False, False, False, Outcome.RESTART),  # a crash while starting
        (-9, True, False, True, Outcome.RESTART),  # killed while serving
        (0, True, False, True, Outcome.RESTART),  # stopped by someone else: keep N
        (0, True, True, True, Outcome.STOPPED),  # we asked it to stop
        (2, False, True, False, Outcome.STOPPED),
    ],
)
def test_what_a_workers_exit_means(
    code: int, served: bool, stopping: bool, service_started: bool, expected: Outcome
) -> None:
    """Only exit 2 of a worker that never served, before the service first served, ends
    the service; during shutdown every exit is a stop; everything else is restarted."""
    outcome = RestartPolicy().outcome(
        code=code, served=served, stopping=stopping, service_started=service_started
    )
    assert outcome is expected


def test_restart_delays_grow_in_a_crash_loop_and_start_over_after_a_stable_run() -> None:
    """Attempts count up while a worker dies young (its delay ceiling doubles to the cap),
    and go back to the first after a worker that ran for a while."""
    policy = RestartPolicy(backoff=Backoff(0.5, 4.0, rng=lambda: 1.0), stable_after_s=30.0)
    attempt = 0
    delays = []
    for _ in range(5):
        attempt = policy.next_attempt(attempt, lived_s=0.2)
        delays.append(policy.delay(attempt))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.next_attempt(attempt, lived_s=31.0) == 1


# -- the pod's metrics ----------------------------------------------------------------------


def _exposition(enqueued: float) -> str:
    return (
        "# HELP offpath_emitter_events_enqueued_total Events enqueued.\n"
        "# TYPE offpath_emitter_events_enqueued_total counter\n"
        f"offpath_emitter_events_enqueued_total {enqueued}\n"
    )


def test_pod_metrics_label_each_worker_and_mark_the_unreachable_down() -> None:
    """One scrape shows each reachable worker's metrics under worker=<i>, up=0 for a worker
    that is not serving or does not answer, and the supervisor's restarts per worker."""
    answers = {9000: _exposition(5), 9002: _exposition(7)}

    def read(port: int, _timeout: float) -> str:
        if port not in answers:
            raise ConnectionRefusedError(port)
        return answers[port]

    metrics = WorkerMetrics(4, read)
    metrics.publish(
        WorkersView(configured=4, metrics_ports=(9000, None, 9002, 9003), restarts=(0, 2, 0, 1))
    )
    registry = CollectorRegistry()
    registry.register(metrics)
    samples = {
        (s.name, s.labels.get("worker")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("offpath_emitter_events_enqueued_total", "0")] == 5
    assert samples[("offpath_emitter_events_enqueued_total", "2")] == 7
    assert ("offpath_emitter_events_enqueued_total", "1") not in samples
    assert [samples[("offpath_query_worker_up", str(i))] for i in range(4)] == [1, 0, 1, 0]
    assert samples[("offpath_query_worker_restarts_total", "1")] == 2
    assert samples[("offpath_query_workers", None)] == 4
    assert samples[("offpath_query_workers_serving", None)] == 3


# -- the lifecycle, with stand-in workers ------------------------------------------------------

# A stand-in worker: says it serves (or why it cannot start) through the real WorkerLink,
# notes its environment and the signal it got in files, and ends as its behaviour says.
_STAND_IN = """
import os, signal, sys, time
from offpath.kit.workers import WorkerLink
index, fd, behaviour, state = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
link = WorkerLink(index, fd)
if behaviour == "cannot-start":
    link.failed("cannot load the skills catalog: gone")
    sys.exit(2)
if behaviour == "never-ready":  # still starting: no signal handler yet
    while True:
        time.sleep(1)
if behaviour == "crash-first" and not os.path.exists(state + ".crashed"):
    open(state + ".crashed", "w").close()
    os._exit(3)
with open(state + ".env", "w") as out:
    out.write(os.environ["OFFPATH_PRODUCER_ID"] + " " + os.environ["OFFPATH_QUERY_PORT"])

def stop(signum, _frame):
    with open(state + ".signal", "w") as out:
        out.write(signal.Signals(signum).name)
    sys.exit(7 if behaviour == "unclean" else 0)

if behaviour == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
link.serving(int(os.environ["OFFPATH_QUERY_PORT"]), 0)
while True:
    time.sleep(1)
"""


@dataclass
class Run:
    """A supervisor running as a task, what it logged, and its stand-ins' state files."""

    supervisor: Supervisor
    task: asyncio.Task[int]
    logs: list[MutableMapping[str, Any]]
    state: Path
    stop: asyncio.Event

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [r for r in self.logs if r["event"] == name]

    async def until(self, what: Callable[[], bool], label: str) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not what():
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"the supervisor ended before: {label}")
                await asyncio.sleep(0.01)

    def file(self, index: int, suffix: str) -> str:
        return (self.state / f"w{index}{suffix}").read_text()


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
async def start(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> AsyncIterator[Callable[..., Run]]:
    """Starts a supervisor whose workers are stand-ins behaving as asked (by index);
    whatever is still running at the end is stopped."""
    runs: list[Run] = []

    def begin(behaviours: list[str], **options: Any) -> Run:
        def command(plan: WorkerPlan, status_fd: int) -> list[str]:
            return [
                sys.executable,
                "-c",
                _STAND_IN,
                str(plan.index),
                str(status_fd),
                behaviours[plan.index],
                str(tmp_path / f"w{plan.index}"),
            ]

        options.setdefault("policy", RestartPolicy(backoff=Backoff(0.01, 0.05)))
        supervisor = Supervisor(
            _settings(len(behaviours)), {**os.environ}, command=command, **options
        )
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(supervisor.run(stop))
        run = Run(supervisor, task, logs, tmp_path, stop)
        runs.append(run)
        return run

    yield begin
    for run in runs:
        run.stop.set()
        # A start-up error was the test's to check; here only the ending matters.
        with contextlib.suppress(StartupError):
            await asyncio.wait_for(run.task, TIMEOUT_S)


async def test_server_started_waits_for_every_worker_and_sigint_reaches_them_all(
    start: Callable[..., Run],
) -> None:
    """server_started comes once, after both workers serve, naming them; the workers got
    the one port and their own producer ids; a SIGINT to the supervisor is forwarded to
    each, and all exiting 0 makes the supervisor's exit 0, after shutdown_complete."""
    run = start(["serve", "serve"])
    await run.until(lambda: bool(run.events("server_started")), "server_started")
    (started,) = run.events("server_started")
    assert started["workers"] == 2
    assert len(set(started["worker_pids"])) == 2
    assert len(run.events("worker_ready")) == 2
    port = started["port"]
    assert port != 0
    assert {run.file(i, ".env") for i in (0, 1)} == {f"pod-7-w0 {port}", f"pod-7-w1 {port}"}
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(run.task, TIMEOUT_S) == 0
    assert [run.file(i, ".signal") for i in (0, 1)] == ["SIGINT", "SIGINT"]
    assert [r["code"] for r in run.events("worker_stopped")] == [0, 0]
    assert run.logs[-1]["event"] == "shutdown_complete"


async def test_a_worker_that_dies_is_restarted_and_the_supervisor_stays(
    start: Callable[..., Run],
) -> None:
    """A worker that dies while starting is logged and started again after a backoff; the
    service then serves with both, and the restart is counted."""
    run = start(["crash-first", "serve"])
    await run.until(lambda: bool(run.events("server_started")), "server_started")
    (exited,) = run.events("worker_exited")
    assert exited["worker"] == 0
    assert exited["code"] == 3
    assert exited["restart_in_s"] <= 0.01
    ready = [r for r in run.events("worker_ready") if r["worker"] == 0]
    assert [r["restarts"] for r in ready] == [1]
    assert not run.task.done()
    run.stop.set()
    assert await asyncio.wait_for(run.task, TIMEOUT_S) == 0


async def test_a_killed_worker_is_restarted_after_the_service_started(
    start: Callable[..., Run],
) -> None:
    """SIGKILL of a serving worker: the supervisor logs it with the signal's name and
    starts a new process in its place, which serves."""
    run = start(["serve", "serve"])
    await run.until(lambda: bool(run.events("server_started")), "server_started")
    victim = run.events("server_started")[0]["worker_pids"][1]
    os.kill(victim, signal.SIGKILL)
    await run.until(
        lambda: any(r["worker"] == 1 and r["pid"] != victim for r in run.events("worker_ready")),
        "worker 1 ready again",
    )
    (exited,) = run.events("worker_exited")
    assert (exited["pid"], exited["how"]) == (victim, "SIGKILL")
    assert [r["restarts"] for r in run.events("worker_ready") if r["worker"] == 1] == [0, 1]
    run.stop.set()
    assert await asyncio.wait_for(run.task, TIMEOUT_S) == 0


async def test_a_worker_that_cannot_start_ends_the_service_with_its_message(
    start: Callable[..., Run],
) -> None:
    """A worker exiting 2 with a start-up error before the service served: the supervisor
    stops the others and raises that worker's message; no server_started."""
    run = start(["serve", "cannot-start"])
    with pytest.raises(StartupError, match="worker 1: cannot load the skills catalog: gone"):
        await asyncio.wait_for(run.task, TIMEOUT_S)
    assert run.events("server_started") == []
    assert run.events("worker_exited") == []


@pytest.mark.parametrize("behaviour", ["stubborn", "unclean"])
async def test_a_worker_that_does_not_stop_cleanly_makes_the_exit_unclean(
    start: Callable[..., Run], behaviour: str
) -> None:
    """A worker that ignores SIGTERM is SIGKILLed once grace + drain + margin have passed,
    and one that exits non-zero is reported: either way the supervisor's exit is 1."""
    run = start(["serve", behaviour], stop_margin_s=0.3)
    await run.until(lambda: bool(run.events("server_started")), "server_started")
    run.stop.set()
    assert await asyncio.wait_for(run.task, TIMEOUT_S) == 1
    killed = run.events("worker_killed")
    assert [r["worker"] for r in killed] == ([1] if behaviour == "stubborn" else [])
    codes = {r["worker"]: r["code"] for r in run.events("worker_stopped")}
    assert codes == {0: 0, 1: -signal.SIGKILL if behaviour == "stubborn" else 7}


async def test_a_stop_during_start_up_is_clean_for_workers_still_starting(
    start: Callable[..., Run],
) -> None:
    """A stop before every worker serves: the supervisor logs no server_started, and a
    worker that ends by the forwarded SIGTERM before it served (it acknowledged nothing)
    still counts as a clean stop: exit 0."""
    run = start(["serve", "never-ready"])
    await run.until(lambda: bool(run.events("worker_ready")), "worker 0 ready")
    run.stop.set()
    assert await asyncio.wait_for(run.task, TIMEOUT_S) == 0
    codes = {r["worker"]: r["code"] for r in run.events("worker_stopped")}
    assert codes == {0: 0, 1: -signal.SIGTERM}
    assert run.events("server_started") == []
