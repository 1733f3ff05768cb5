"""`offpath load` then `offpath reconcile` over the running system: every
event id a reply carried is found stored, 100 % delivered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from offpath.dev.stack import DevStack

QUERIES = 200
RATE = 100


def _offpath(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OFFPATH_QUERY_TARGET": stack.query_target,
        "OFFPATH_INGEST_TARGET": stack.ingest_target,
    }
    return subprocess.run(
        [sys.executable, "-m", "offpath.client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_load_then_reconcile_reports_100_percent_delivered(stack: DevStack, tmp_path: Path) -> None:
    """200 queries at 100/s all answer with distinct event ids, and reconcile
    (waiting for the last batches) finds every one stored: 100 % delivered,
    nothing missing or repeated, exit 0."""
    ids = tmp_path / "ids.txt"
    load = _offpath(
        stack, "load", "--rate", str(RATE), "--duration", f"{QUERIES // RATE}s", "--ids", str(ids)
    )
    assert load.returncode == 0, load.stderr
    assert f"{QUERIES} answered, 0 failed" in load.stdout
    written = ids.read_text().splitlines()
    assert len(written) == len(set(written)) == QUERIES
    done = _offpath(stack, "reconcile", str(ids), "--wait", "30", "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["deliveredPercent"] == 100.0
    assert (report["delivered"], report["missing"]) == (QUERIES, [])
    assert report["repeatedInFile"] == {}
    assert report["listedTwice"] == []
