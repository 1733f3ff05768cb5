"""QueryService with OFFPATH_QUERY_WORKERS=2: a supervisor and two worker processes on
one port, over the wire with the local AWS endpoint and AnalyticsIngest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offpath.client import OffpathClient
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log
from offpath.kit.metrics import scrape
from offpath.v1 import query_pb2, query_pb2_grpc

TIMEOUT_S = 15.0
# Enough fresh connections that the kernel's hash puts some on each worker (each misses
# one given worker with probability 1/2: 40 all missing is 1e-12).
MAX_CONNECTIONS = 40


@dataclass(frozen=True)
class Helpers:
    """The running helpers and the folder where every child's log goes."""

    stack: DevStack
    logs: Path


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helpers]:
    """The local AWS endpoint and AnalyticsIngest; each test starts its own QueryService."""
    logs = tmp_path_factory.mktemp("workers-logs")
    stack = DevStack(
        aws_port=0, ingest_port=0, query_port=0, env={"OFFPATH_INGEST_WAIT_S": "1"}, log_dir=logs
    )
    try:
        stack.start(("local-aws", "ingest"))
        yield Helpers(stack, logs)
    finally:
        stack.stop()


def _spawn_workers(helpers: Helpers, name: str, **extra: str) -> dict[str, Any]:
    """Start QueryService with two workers as child ``name``; its server_started record."""
    stack = helpers.stack
    stack.spawn(
        name,
        "offpath.query",
        {
            **stack.aws_env(),
            "OFFPATH_QUERY_HOST": stack.host,
            "OFFPATH_QUERY_PORT": "0",
            "OFFPATH_QUERY_METRICS_PORT": "0",
            "OFFPATH_QUERY_WORKERS": "2",
            "OFFPATH_SHUTDOWN_GRACE_S": "1",
            **extra,
        },
    )
    (started,) = [r for r in _log(helpers, name) if r["event"] == "server_started"]
    return started


def _log(helpers: Helpers, name: str) -> list[dict[str, Any]]:
    return read_log(helpers.logs / f"{name}.log")


def _enqueued_by_worker(stack: DevStack, name: str) -> dict[str, float]:
    """Events each worker has emitted, from one scrape of the supervisor's /metrics."""
    port = stack.children[name].metrics_port
    assert port is not None
    text = scrape(port, TIMEOUT_S, host=stack.host)
    return {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "offpath_emitter_events_enqueued_total"
    }


def _query_until_served_by(stack: DevStack, name: str, workers: set[str]) -> list[str]:
    """Queries over fresh connections until every worker in ``workers`` has emitted an
    event; the event ids of every reply."""
    target = f"{stack.host}:{stack.port(name)}"
    ids: list[str] = []
    for attempt in range(MAX_CONNECTIONS):
        # A connection of its own: channels with equal arguments share one by default.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            for i in range(3):
                request = query_pb2.QueryRequest(query=f"kubernetes {attempt}.{i}")
                ids.append(stub.Query(request, timeout=TIMEOUT_S).event_id)
        counts = _enqueued_by_worker(stack, name)
        if all(counts.get(worker, 0) > 0 for worker in workers):
            return ids
    raise AssertionError(f"after {MAX_CONNECTIONS} connections, per worker: {counts}")


def _wait_for_record(helpers: Helpers, name: str, match: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for record in _log(helpers, name):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        time.sleep(0.05)
    raise AssertionError(f"no log record {match} within {TIMEOUT_S}s")


def test_two_workers_serve_survive_a_kill_and_drain_every_event_on_sigterm(
    helpers: Helpers,
) -> None:
    """Both workers answer on the one port (seen in the pod's metrics); a SIGKILLed worker
    is restarted and answers again; SIGTERM ends the supervisor with 0; and every
    acknowledged event, the killed worker's included, is in DynamoDB under its worker's
    producer id."""
    stack, name = helpers.stack, "query-2w"
    producer = f"e2e-{uuid.uuid4().hex[:8]}"
    started = _spawn_workers(helpers, name, OFFPATH_PRODUCER_ID=producer)
    assert started["workers"] == 2
    assert started["port"] == stack.port(name)
    ids = _query_until_served_by(stack, name, {"0", "1"})

    victim = started["worker_pids"][0]
    os.kill(victim, signal.SIGKILL)
    exited = _wait_for_record(helpers, name, {"event": "worker_exited", "pid": victim})
    assert exited["how"] == "SIGKILL"
    ready = _wait_for_record(helpers, name, {"event": "worker_ready", "restarts": 1})
    assert ready["worker"] == 0
    # A new process's counter starts at 0: above it, the restarted worker answered.
    ids += _query_until_served_by(stack, name, {"0"})

    assert stack.stop_child(name) == 0
    (complete,) = [r for r in _log(helpers, name) if r["event"] == "shutdown_complete"]
    assert complete["codes"] == [0, 0]
    assert complete["restarts"] == 1

    producers: dict[str, int] = {}
    missing = []
    with OffpathClient(ingest_target=stack.ingest_target) as client:
        for event_id in ids:
            try:
                stored = client.wait_for_event(event_id, timeout=TIMEOUT_S)
            except grpc.RpcError:
                missing.append(event_id)
                continue
            producers[stored.event.producer_id] = producers.get(stored.event.producer_id, 0) + 1
    assert missing == [], f"{len(missing)} of {len(ids)} acknowledged events lost"
    assert set(producers) == {f"{producer}-w0", f"{producer}-w1"}


def test_workers_end_when_the_supervisor_is_killed(helpers: Helpers) -> None:
    """SIGKILL of the supervisor (it cannot forward anything): its workers get SIGTERM from
    the kernel, shut down in order, and are gone within seconds."""
    name = "query-orphans"
    started = _spawn_workers(helpers, name, OFFPATH_ANALYTICS="off")
    supervisor = helpers.stack.children[name].process
    supervisor.send_signal(signal.SIGKILL)
    assert supervisor.wait(TIMEOUT_S) == -signal.SIGKILL
    deadline = time.monotonic() + TIMEOUT_S
    while any(_alive(pid) for pid in started["worker_pids"]):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.05)
    records = _log(helpers, name)
    stops = [r for r in records if r["event"] == "shutdown_started" and "worker" in r]
    assert sorted((r["worker"], r["signal"]) for r in stops) == [(0, "SIGTERM"), (1, "SIGTERM")]
    completed = [r["worker"] for r in records if r["event"] == "worker_shutdown_complete"]
    assert sorted(completed) == [0, 1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie awaiting its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OFFPATH_"))}
    return subprocess.run(
        [sys.executable, "-m", "offpath.query"],
        env={
            **base,
            "AWS_REGION": "us-east-1",
            "OFFPATH_QUERY_METRICS_PORT": "0",
            "OFFPATH_QUERY_WORKERS": "2",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_port_in_use_stops_the_supervisor_before_any_worker() -> None:
    """With workers, a port another program holds is still one line and exit 2, and no
    worker was started."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = _start(OFFPATH_QUERY_PORT=str(port))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"offpath-query: cannot bind gRPC port 127.0.0.1:{port}")
    assert "worker_started" not in done.stdout


def test_a_workers_startup_error_is_the_services_one_line() -> None:
    """A setting only a worker finds wrong (an unreadable catalog) ends the supervisor with
    exit 2 and one stderr line carrying that worker's message."""
    done = _start(OFFPATH_QUERY_PORT="0", OFFPATH_SKILLS_CATALOG="/nonexistent.json")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("offpath-query: worker ")
    assert "cannot load the skills catalog" in lines[0]
    assert "/nonexistent.json" in lines[0]
