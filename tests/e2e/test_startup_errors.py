"""A service that cannot start says why in one line and exits 2, no traceback; one
that can, starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log


def _start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OFFPATH_"))}
    return subprocess.run(
        [sys.executable, "-m", module],
        env={
            **base,
            "AWS_REGION": "us-east-1",
            "OFFPATH_QUERY_METRICS_PORT": "0",
            "OFFPATH_INGEST_METRICS_PORT": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("module", "variable"),
    [("offpath.query", "OFFPATH_QUERY_PORT"), ("offpath.ingest", "OFFPATH_INGEST_PORT")],
)
def test_bad_setting_names_the_variable(module: str, variable: str) -> None:
    """A malformed setting stops start-up with the variable and value in the message."""
    done = _start(module, **{variable: "fifty"})
    assert done.returncode == 2
    assert f"{variable}='fifty' is not an integer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("module", "variable"),
    [("offpath.query", "OFFPATH_QUERY_PORT"), ("offpath.ingest", "OFFPATH_INGEST_PORT")],
)
def test_port_in_use_is_a_clear_error(module: str, variable: str) -> None:
    """A port someone else holds stops start-up with 'cannot bind', not a hang."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = _start(module, **{variable: str(port)})
    assert done.returncode == 2
    assert f"cannot bind gRPC port 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_region_is_reported_before_serving() -> None:
    """Without an AWS region QueryService refuses to start rather than drop every event."""
    done = _start("offpath.query", AWS_REGION="", OFFPATH_QUERY_PORT="0")
    assert done.returncode == 2
    assert "no AWS region configured" in done.stderr


def test_unreadable_catalog_is_reported() -> None:
    """A skills catalog path that does not exist is named in the error."""
    done = _start(
        "offpath.query", OFFPATH_QUERY_PORT="0", OFFPATH_SKILLS_CATALOG="/nonexistent.json"
    )
    assert done.returncode == 2
    assert "cannot load the skills catalog" in done.stderr
    assert "/nonexistent.json" in done.stderr


def test_queue_name_alone_is_enough_for_query_service(tmp_path: Path) -> None:
    """OFFPATH_SQS_QUEUE_NAME=events with no dead-letter name set lets QueryService
    start (a producer never needs the DLQ's name), and it stops cleanly."""
    stack = DevStack(aws_port=0, query_port=0, log_dir=tmp_path)
    try:
        stack.start(("local-aws",))
        stack.spawn(
            "query",
            "offpath.query",
            {
                **stack.aws_env(),
                "OFFPATH_QUERY_PORT": "0",
                "OFFPATH_QUERY_METRICS_PORT": "0",
                "OFFPATH_SQS_QUEUE_NAME": "events",
            },
        )
        assert stack.stop_child("query") == 0
    finally:
        stack.stop()
    records = read_log(tmp_path / "query.log")
    assert "startup_failed" not in {r["event"] for r in records}
    (started,) = [r for r in records if r["event"] == "emitter_started"]
    assert started["queue"] == "events"
