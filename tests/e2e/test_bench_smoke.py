"""`make bench` end to end, tiny (``--profile smoke``): the harness starts
the stack at the lowest priority, runs every phase, and prints every cell of
the contract with its goal and a verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from offpath.bench.goals import GOALS
from offpath.dev.stack import DevStack

VERDICTS = {
    "met",
    "missed",
    "n/a",
    "load generator late",
    "load generator saturated",
    "serving core shared",
}


def test_bench_smoke_prints_every_cell(tmp_path: Path) -> None:
    """A one-round run yields, for the default sender, a verdict on every goal
    of the contract, in the JSON and on stdout, from runs that really served
    their load (every request measured, every event delivered), plus the chart."""
    done = subprocess.run(
        [sys.executable, "-m", "offpath.bench", "--profile", "smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    report = json.loads((run_dir / "bench.json").read_text())
    mode = "pinned" if len(os.sched_getaffinity(0)) >= 2 else "unpinned"
    assert list(report["modes"]) == [mode]

    product = {c["goal"] for c in report["cells"] if c["variant"] == "background"}
    faults = {c["goal"] for c in report["cells"] if c["variant"].startswith("background-sqs")}
    assert product | faults == set(GOALS)
    for cell in report["cells"]:
        assert cell["verdict"] in VERDICTS, cell
        line = next(
            line
            for line in done.stdout.splitlines()
            if cell["title"] in line and f" {cell['variant']} " in line
        )
        assert cell["target"] in line
        assert cell["verdict"] in line

    latency = report["modes"][mode]["phases"]["latency"]
    (only,) = latency["rounds"]
    assert set(only["runs"]) == {"off", "background", "background-sqs-slow", "background-sqs-down"}
    for run in only["runs"].values():
        assert run["latency_ms"]["measured"] == 100  # 100 req/s for 1 s
        assert run["errors"] == {}
        assert run["generator"]["sends"] == 100
        assert run["server"]["loop_lag"]["samples"] > 0
        assert run["cpu"]["events"] == 100
    background = only["runs"]["background"]
    assert background["server"]["emitter"]["sent"] == background["server"]["emitter"]["enqueued"]
    assert background["sqs"]["per_1000_events"] > 0
    (fresh,) = report["modes"][mode]["phases"]["freshness"]["rounds"]
    assert fresh["runs"]["background"]["freshness"]["missing"] == 0
    assert report["modes"][mode]["phases"]["at_max"]["rate"] > 0
    assert (run_dir / "bench.svg").read_text().startswith("<svg")


def test_helpers_start_at_the_lowest_priority_on_their_cores(tmp_path: Path) -> None:
    """DevStack's nice and cpus reach the child (and what it starts would
    inherit them): the bench's helpers run at nice 19 beside the generator."""
    cores = sorted(os.sched_getaffinity(0))
    stack = DevStack(log_dir=tmp_path, cpus={cores[-1]})
    try:
        child = stack.spawn(
            "proxy",
            "offpath.dev.proxy",
            {},
            args=("--upstream", "127.0.0.1:9", "--blackhole"),
            cpus={cores[-1]},
            nice=19,
        )
        assert os.getpriority(os.PRIO_PROCESS, child.process.pid) == 19
        assert os.sched_getaffinity(child.process.pid) == {cores[-1]}
    finally:
        stack.stop()
