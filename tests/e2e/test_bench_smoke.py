"""`make bench` end to end, tiny: the harness starts the stack, loads two
servers and writes comparable results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_writes_results_with_ratios(tmp_path: Path) -> None:
    """A short unpinned run of echo, off and background yields percentiles, ratios
    against off, the SQS request rate and freshness, as JSON and an SVG chart."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "offpath.bench",
            "--modes",
            "unpinned",
            "--variants",
            "echo,off,background",
            "--rate",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = list(tmp_path.iterdir())
    report = json.loads((run_dir / "bench.json").read_text())
    results = report["modes"]["unpinned"]
    assert set(results) == {"echo", "off", "background"}
    for entry in results.values():
        assert entry["latency_ms"]["measured"] == 100
        assert entry["latency_ms"]["errors"] == {}
        assert entry["latency_ms"]["p50"] > 0
    assert results["off"]["ratio_vs_off"] == {"p50": 1.0, "p99": 1.0}
    background = results["background"]
    assert background["emitter"]["sent"] == background["emitter"]["enqueued"] == 150
    assert background["freshness"]["missing"] == 0
    assert (run_dir / "bench.svg").read_text().startswith("<svg")
    assert "background" in done.stdout
