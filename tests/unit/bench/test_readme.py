"""``python -m offpath.bench.readme``: the README's table from a bench.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offpath.bench import readme
from offpath.bench.report import BEGIN, END

REPORT = {
    "started": "20260101T000000Z",
    "profile": "full",
    "rounds": 3,
    "elapsed_s": 500.0,
    "machine": {"cpus": 2, "python": "3.11.7", "grpcio": "1.85.0"},
    "modes": {},
    "cells": [
        {
            "goal": "p99",
            "title": "Query p99, analytics on ÷ off",
            "target": "≤ 1.05",
            "op": "<=",
            "threshold": 1.05,
            "unit": "",
            "variant": "background",
            "mode": "pinned",
            "value": 1.02,
            "rounds": [{"value": 1.02, "disturbed": None}],
            "used": 1,
            "excluded": {},
            "verdict": "met",
            "detail": "",
        }
    ],
}


def test_writes_the_newest_run_between_the_markers(tmp_path: Path) -> None:
    """Without a path the newest bench-results/*/bench.json is used, and only
    the marked part of the README changes."""
    results = tmp_path / "bench-results"
    for stamp, profile in (("20250101T000000Z", "quick"), ("20260101T000000Z", "full")):
        (results / stamp).mkdir(parents=True)
        (results / stamp / "bench.json").write_text(json.dumps({**REPORT, "profile": profile}))
    target = tmp_path / "README.md"
    target.write_text(f"intro\n{BEGIN}\nplaceholder\n{END}\noutro\n")
    readme.main(["--readme", str(target), "--results", str(results)])
    text = target.read_text()
    assert text.startswith("intro\n")
    assert text.endswith("outro\n")
    assert "placeholder" not in text
    assert "From `make bench` (profile full" in text
    assert (
        "| pinned | Query p99, analytics on ÷ off | background | 1.02 | ≤ 1.05 | 1.02 | met |"
        in text
    )


def test_a_readme_without_markers_is_refused(tmp_path: Path) -> None:
    """No markers: an error, and the README is left alone."""
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(REPORT))
    target = tmp_path / "README.md"
    target.write_text("no markers\n")
    with pytest.raises(SystemExit):
        readme.main([str(source), "--readme", str(target)])
    assert target.read_text() == "no markers\n"


def test_the_figures_without_a_goal_follow_the_cells(tmp_path: Path) -> None:
    """A run with the workers phase: its gain is a row of a second table,
    value and rounds, no verdict column of met / missed."""
    figure = {
        "figure": "workers_qps",
        "title": "Max QPS, 2 workers ÷ 1 worker",
        "unit": "",
        "variant": "background",
        "mode": "unpinned",
        "value": 1.27,
        "rounds": [{"value": 1.27, "disturbed": None}, {"value": 1.3, "disturbed": None}],
        "used": 2,
        "excluded": {},
        "verdict": "measured",
        "detail": "rounds 1.27 to 1.3; 8 connections, 4 in flight on each",
    }
    source = tmp_path / "bench.json"
    source.write_text(json.dumps({**REPORT, "figures": [figure]}))
    target = tmp_path / "README.md"
    target.write_text(f"{BEGIN}\n{END}\n")
    readme.main([str(source), "--readme", str(target)])
    text = target.read_text()
    assert "Measured, no goal in the contract" in text
    assert (
        "| unpinned | Max QPS, 2 workers ÷ 1 worker | background | 1.27 | 1.27 1.3 "
        "| rounds 1.27 to 1.3; 8 connections, 4 in flight on each |"
    ) in text
    assert text.index("| pinned | Query p99") < text.index("| unpinned | Max QPS, 2 workers")
