"""From runs to figures: cells from within-round comparisons, the medians
table, the printed table and the README block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offpath.bench.goals import CORE_SHARED, GENERATOR_LATE, MEASURED, MET, MISSED, NOT_AVAILABLE
from offpath.bench.report import (
    BEGIN,
    END,
    FIGURES_HEADING,
    cells_for_mode,
    figures_for_mode,
    readme_block,
    replace_block,
    summarize,
    table,
)

Run = dict[str, Any]


def run(
    p99: float,
    *,
    p999: float | None = None,
    disturbed: str | None = None,
    lag: float = 1.0,
    serving_ns: int = 500_000_000,
    events: int = 1000,
    **extra: Any,
) -> Run:
    """One run as the benchmark records it (only the fields the report reads)."""
    return {
        "latency_ms": {"p50": p99 / 2, "p99": p99, "p99.9": p999 or p99 * 1.5},
        "disturbed": disturbed,
        "server": {"loop_lag": {"p99_ms": lag}},
        "cpu": {"serving_ns": serving_ns, "events": events, "serving_us_per_event": 500.0},
        "generator": {"late_share": 0.02 if disturbed else 0.0},
        "errors": {},
        **extra,
    }


def phase(rounds: list[dict[str, Run]], **extra: Any) -> dict[str, Any]:
    variants = list(dict.fromkeys(name for r in rounds for name in r))
    return {
        "variants": variants,
        "rate": 200.0,
        "concurrency": 0,
        "warmup_s": 1.0,
        "duration_s": 3.0,
        "rounds": [{"order": list(r), "runs": r} for r in rounds],
        **extra,
    }


def mode_result(phases: dict[str, Any], unavailable: dict[str, str] | None = None) -> Any:
    result = {
        "serving_cpus": [0],
        "other_cpus": [1],
        "helpers_nice": 19,
        "default_sender": "thread",
        "unavailable": unavailable or {},
        "duplicates": {"background-thread": "same as background"},
        "phases": phases,
    }
    result["summary"] = summarize(result)
    return result


def background(p99: float, **kw: Any) -> Run:
    kw.setdefault("sqs", {"per_1000_events": 5.0})
    kw.setdefault("freshness", {"p99_s": 1.1})
    kw.setdefault(
        "server", {"loop_lag": {"p99_ms": 1.1}, "burst": {"max_ms": 0.3, "complete": True}}
    )
    return run(p99, **kw)


def by_goal(cells: list[Any], variant: str = "background") -> dict[str, Any]:
    return {c.goal.id: c for c in cells if c.variant == variant}


class TestCells:
    def test_ratios_are_taken_within_each_round(self) -> None:
        """Each round's variant is compared with that round's off, and the
        cell is the median of those ratios (not a ratio of medians)."""
        latency = phase(
            [
                {"off": run(2.0), "background": background(2.1)},
                {"background": background(6.0), "off": run(4.0)},
                {"off": run(3.0), "background": background(3.0)},
            ]
        )
        cells = by_goal(cells_for_mode("pinned", mode_result({"latency": latency})))
        assert [r.value for r in cells["p99"].rounds] == pytest.approx([1.05, 1.5, 1.0])
        assert cells["p99"].value == pytest.approx(1.05)
        assert cells["p99"].verdict == MET

    def test_a_round_with_a_late_baseline_is_left_out(self) -> None:
        """When off's run was disturbed, its round says nothing about the ratio."""
        latency = phase(
            [
                {"off": run(2.0), "background": background(2.0)},
                {"off": run(9.0, disturbed=GENERATOR_LATE), "background": background(2.0)},
                {"off": run(2.0), "background": background(2.6)},
            ]
        )
        cell = by_goal(cells_for_mode("pinned", mode_result({"latency": latency})))["p99"]
        assert cell.used == pytest.approx([1.0, 1.3])
        assert cell.excluded == {GENERATOR_LATE: 1}

    def test_every_goal_of_the_latency_phase(self) -> None:
        """The product gets p99, p99.9, loop lag, CPU, burst and SQS requests;
        each fault variant its p99 cell; freshness comes from its own phase."""
        latency = phase(
            [
                {
                    "off": run(2.0, lag=1.0, serving_ns=500_000_000),
                    "background": background(2.0, serving_ns=503_000_000),
                    "background-sqs-slow": background(2.4),
                    "background-sqs-down": background(2.0),
                }
            ]
        )
        freshness = phase([{"background": background(2.0)}])
        cells = cells_for_mode("pinned", mode_result({"latency": latency, "freshness": freshness}))
        product = by_goal(cells)
        assert set(product) == {
            "p99",
            "p999",
            "loop_lag",
            "cpu_per_event",
            "burst",
            "sqs_per_1000",
            "freshness",
        }
        assert "freshness" not in by_goal(
            cells_for_mode("pinned", mode_result({"latency": latency}))
        )
        assert product["cpu_per_event"].value == pytest.approx(3.0)  # µs per event
        assert product["loop_lag"].value == pytest.approx(1.1)
        assert by_goal(cells, "background-sqs-slow")["p99_sqs_slow"].verdict == MISSED
        assert by_goal(cells, "background-sqs-down")["p99_sqs_down"].verdict == MET

    def test_an_unavailable_variant_is_one_line_with_its_reason(self) -> None:
        """A sender that does not exist yet is reported, not a crash."""
        latency = phase([{"off": run(2.0), "background": background(2.0)}])
        why = "offpath-query: OFFPATH_EMIT_SENDER='process' is not one of thread"
        cells = cells_for_mode(
            "pinned", mode_result({"latency": latency}, {"background-process": why})
        )
        (cell,) = [c for c in cells if c.variant == "background-process"]
        assert cell.verdict == NOT_AVAILABLE
        assert why in cell.detail()

    def test_a_burst_not_fully_logged_counts_only_when_it_already_misses(self) -> None:
        """A lower bound of 4 ms misses the 0.5 ms goal; a lower bound of
        0.2 ms proves nothing and gives n/a."""

        def burst(max_ms: float) -> Run:
            return background(
                2.0,
                server={
                    "loop_lag": {"p99_ms": 1.0},
                    "burst": {
                        "max_ms": max_ms,
                        "complete": False,
                        "missing": "the thread emitter does not log loop_slice_max_us",
                    },
                },
            )

        for max_ms, verdict in ((4.0, MISSED), (0.2, NOT_AVAILABLE)):
            latency = phase([{"off": run(2.0), "background": burst(max_ms)}])
            cell = by_goal(cells_for_mode("pinned", mode_result({"latency": latency})))["burst"]
            assert cell.verdict == verdict
            assert "lower bound" in cell.detail()

    def test_throughput_and_at_max(self) -> None:
        """Max QPS is compared with off's in each round; the at-max phase's
        p99 likewise, and its cell names the rate."""
        max_qps = phase(
            [
                {"off": {"qps": 3000.0, "disturbed": None}, "background": {"qps": 2850.0}},
                {"off": {"qps": 3100.0, "disturbed": None}, "background": {"qps": 3100.0}},
            ],
            concurrency=32,
        )
        at_max = phase([{"off": run(10.0), "background": background(10.5)}], rate=2440.0)
        cells = by_goal(
            cells_for_mode("pinned", mode_result({"max_qps": max_qps, "at_max": at_max}))
        )
        assert cells["max_qps"].value == pytest.approx((0.95 + 1.0) / 2)
        assert cells["p99_at_max"].verdict == MET
        assert "2440 req/s" in cells["p99_at_max"].detail()


def closed(qps: float, disturbed: str | None = None, **extra: Any) -> Run:
    """A closed-loop run: what the throughput figures read."""
    return {"qps": qps, "disturbed": disturbed, "latency_ms": {"p99": 10.0}, **extra}


def workers_phase(rounds: list[dict[str, Run]], **extra: Any) -> dict[str, Any]:
    return phase(rounds, rate=0.0, concurrency=32, channels=8, **extra)


def unpinned(phases: dict[str, Any], unavailable: dict[str, str] | None = None) -> Any:
    """An unpinned mode's result: the generator on the serving cores."""
    result = mode_result(phases, unavailable)
    result["serving_cpus"] = result["other_cpus"] = [0, 1]
    return result


class TestLayerFigures:
    def test_each_layer_is_taken_over_bare_echo_within_each_round(self) -> None:
        """Each echo layer's figure is its serving-core CPU per request over the bare
        echo server's in the same round (µs), median of rounds; echo itself has none."""

        def echo_run(serving_ns: int, disturbed: str | None = None) -> Run:
            return closed(4000.0, disturbed, cpu={"serving_ns": serving_ns, "events": 1000})

        cost = phase(
            [
                {"echo": echo_run(200_000_000), "echo-record": echo_run(230_000_000)},
                {"echo-record": echo_run(260_000_000), "echo": echo_run(210_000_000)},
                {"echo": echo_run(200_000_000, CORE_SHARED), "echo-record": echo_run(900_000_000)},
            ],
            rate=0.0,
            concurrency=32,
            channels=1,
        )
        (figure,) = figures_for_mode("pinned", mode_result({"cost": cost}))
        assert figure.measure.id == "layer_cpu"
        assert figure.variant == "echo-record"
        assert [r.value for r in figure.rounds] == pytest.approx([30.0, 50.0, 700.0])
        assert figure.value == pytest.approx(40.0)
        assert figure.excluded == {CORE_SHARED: 1}

    def test_a_layer_that_did_not_start_is_named(self) -> None:
        """A layer whose server refused to start gives a figure saying why."""
        cost = phase([{"echo": closed(4000.0)}], variants=["echo", "echo-emit"], concurrency=32)
        (figure,) = figures_for_mode("pinned", mode_result({"cost": cost}, {"echo-emit": "no AWS"}))
        assert figure.verdict == NOT_AVAILABLE
        assert "not available: no AWS" in figure.detail()


class TestWorkersFigures:
    def test_the_gain_is_taken_within_each_round_per_analytics_mode(self) -> None:
        """2 workers over 1 worker's max QPS in the same round: one figure for
        analytics off, one for background, each a median of rounds."""
        workers = workers_phase(
            [
                {
                    "off": closed(3000.0),
                    "off-2-workers": closed(3600.0),
                    "background": closed(2800.0),
                    "background-2-workers": closed(3500.0),
                },
                {
                    "off-2-workers": closed(4000.0),
                    "off": closed(3200.0),
                    "background-2-workers": closed(2900.0),
                    "background": closed(2900.0),
                },
            ]
        )
        figures = {
            f.variant: f for f in figures_for_mode("unpinned", unpinned({"workers": workers}))
        }
        assert set(figures) == {"off", "background"}
        assert [r.value for r in figures["off"].rounds] == pytest.approx([1.2, 1.25])
        assert figures["off"].value == pytest.approx(1.225)
        assert figures["background"].value == pytest.approx((1.25 + 1.0) / 2)
        assert figures["off"].verdict == MEASURED
        detail = figures["off"].detail()
        assert "8 connections, 4 in flight on each" in detail
        assert "load generator on the same 2 cores" in detail

    def test_a_disturbed_run_leaves_its_round_out(self) -> None:
        """Either side disturbed: that round's gain is not evidence."""
        workers = workers_phase(
            [
                {"off": closed(3000.0), "off-2-workers": closed(3600.0)},
                {"off": closed(3000.0, CORE_SHARED), "off-2-workers": closed(6000.0)},
            ]
        )
        (figure,) = figures_for_mode("unpinned", unpinned({"workers": workers}))
        assert figure.value == pytest.approx(1.2)
        assert figure.excluded == {CORE_SHARED: 1}

    def test_no_workers_phase_no_figures(self) -> None:
        """The pinned mode (or a profile without the phase) has none."""
        latency = phase([{"off": run(2.0), "background": background(2.0)}])
        assert figures_for_mode("pinned", mode_result({"latency": latency})) == []

    def test_a_server_that_did_not_start_is_named(self) -> None:
        """A 2-worker variant that refused to start gives a figure saying why."""
        workers = workers_phase([{"off": closed(3000.0)}], variants=["off", "off-2-workers"])
        (figure,) = figures_for_mode(
            "unpinned", unpinned({"workers": workers}, {"off-2-workers": "cannot bind"})
        )
        assert figure.verdict == NOT_AVAILABLE
        assert "off-2-workers not available: cannot bind" in figure.detail()

    def test_the_medians_table_has_the_gain_and_the_idlest_worker(self) -> None:
        """Each 2-worker row: its req/s over the 1-worker server's in the same
        round, and how busy its least busy worker was (about 0 when it got
        no connection)."""
        cpu = {
            "serving_us_per_event": 300.0,
            "main_thread_us_per_event": 300.0,
            "children_us_per_event": 0.0,
        }
        workers = workers_phase(
            [
                {
                    "off": closed(3000.0, cpu=cpu, server={"workers": 1}),
                    "off-2-workers": closed(
                        3900.0, cpu=cpu | {"worker_busy_shares": [0.9, 0.7]}, server={"workers": 2}
                    ),
                }
            ]
        )
        rows = summarize({"phases": {"workers": workers}})["workers"]["rows"]
        assert rows["off-2-workers"]["qps_per_one_worker"] == pytest.approx(1.3)
        assert rows["off-2-workers"]["worker_busy_min"] == pytest.approx(0.7)
        assert "qps_per_one_worker" not in rows["off"]
        assert "worker_busy_min" not in rows["off"]
        # The supervisor's own thread and its children (the workers) are not
        # one server's event loop and sender process.
        assert rows["off"]["main_thread_us_per_event"] == 300.0
        assert "main_thread_us_per_event" not in rows["off-2-workers"]
        assert "sender_cpu_us_per_event" not in rows["off-2-workers"]
        assert rows["off-2-workers"]["serving_cpu_us_per_event"] == 300.0


class TestSummary:
    def test_medians_and_ratios_per_variant(self) -> None:
        """The medians table: per-variant medians, ratios within rounds, and
        the count of disturbed rounds."""
        latency = phase(
            [
                {"off": run(2.0), "background": background(3.0)},
                {"off": run(2.0), "background": background(2.0, disturbed=GENERATOR_LATE)},
                {"off": run(4.0), "background": background(4.0)},
            ]
        )
        rows = summarize({"phases": {"latency": latency}})["latency"]["rows"]
        assert rows["background"]["p99_ms"] == 3.0
        assert rows["background"]["p99_ratio"] == 1.0  # median of 1.5, 1.0, 1.0
        assert rows["background"]["disturbed"] == 1
        assert rows["off"]["rounds"] == 3


def report() -> dict[str, Any]:
    latency = phase(
        [
            {"off": run(2.0), "background": background(2.2)},
            {"background": background(2.0), "off": run(2.0)},
        ]
    )
    result = mode_result({"latency": latency}, {"background-process": "no such sender"})
    return {
        "started": "20260101T000000Z",
        "profile": "quick",
        "rounds": 2,
        "elapsed_s": 80.0,
        "machine": {"cpus": 2, "python": "3.11.7", "grpcio": "1.85.0"},
        "modes": {"pinned": result},
        "cells": [c.as_dict() for c in cells_for_mode("pinned", result)],
    }


def workers_report() -> dict[str, Any]:
    """A run of the workers phase only (``--phases workers``)."""
    workers = workers_phase(
        [
            {"off": closed(3000.0), "off-2-workers": closed(3600.0)},
            {"off-2-workers": closed(3900.0), "off": closed(3000.0)},
        ]
    )
    result = unpinned({"workers": workers})
    return {
        **report(),
        "only_phases": ["workers"],
        "modes": {"unpinned": result},
        "cells": [],
        "figures": [f.as_dict() for f in figures_for_mode("unpinned", result)],
    }


class TestText:
    def test_table_prints_the_figures_without_a_verdict(self) -> None:
        """The gain is a row of its own table, under a heading that says it has
        no goal and that the generator shares the cores; no met / missed."""
        text = table(workers_report())
        assert FIGURES_HEADING in text
        assert "shares the cores" in FIGURES_HEADING
        (line,) = [line for line in text.splitlines() if "2 workers ÷ 1 worker" in line]
        assert line.split()[0] == "unpinned"
        assert " off " in line
        assert "1.25" in line  # median of 1.2 and 1.3
        assert "1.2 1.3" in line
        assert "met" not in line
        assert "missed" not in line
        assert "phases workers only" in text.splitlines()[0]
        assert "closed loop, 8 connections, 4 in flight on each" in text

    def test_readme_block_has_the_figures(self) -> None:
        """The README gets the figures as a Markdown table after the cells."""
        block = readme_block(workers_report(), "make bench")
        assert FIGURES_HEADING in block
        assert "| unpinned | Max QPS, 2 workers ÷ 1 worker | off | 1.25 | 1.2 1.3 |" in block
        assert "qps/1 worker" in block
        assert "| mode | goal |" not in block  # no cells: no empty table
        assert "Phases workers only." in block.splitlines()[0]
        assert FIGURES_HEADING not in readme_block(report(), "make bench")

    def test_table_prints_every_cell_with_goal_and_verdict(self) -> None:
        """Each cell is a line with its goal and met / missed (or why not)."""
        text = table(report())
        for cell in report()["cells"]:
            line = next(
                line
                for line in text.splitlines()
                if cell["title"] in line and cell["variant"] in line
            )
            assert cell["target"] in line
            assert cell["verdict"] in line
        assert "background-process: no such sender" in text
        assert "background-thread: same as background" in text

    def test_readme_block_is_a_markdown_table_of_the_cells(self) -> None:
        """The README block names its source and lists every cell as a row."""
        block = readme_block(report(), "make bench")
        assert block.startswith("From `make bench` (profile quick, 2 rounds")
        rows = [line for line in block.splitlines() if line.startswith("| pinned |")]
        assert len(rows) == len(report()["cells"])


class TestReplaceBlock:
    def test_only_the_marked_part_changes(self) -> None:
        """Text before and after the markers is kept byte for byte."""
        text = f"# Title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
        updated = replace_block(text, "new table")
        assert updated == f"# Title\n\nbefore\n{BEGIN}\nnew table\n{END}\nafter\n"
        assert replace_block(updated, "new table") == updated

    def test_missing_markers_are_an_error(self) -> None:
        """A README without both markers (in order) is not silently rewritten."""
        with pytest.raises(ValueError, match="bench:begin"):
            replace_block("no markers here", "table")
        with pytest.raises(ValueError, match="bench:begin"):
            replace_block(f"{END}\n{BEGIN}\n", "table")


class TestChart:
    def test_svg_has_a_bar_per_cell(self, tmp_path: Path) -> None:
        """The chart is well-formed SVG naming every cell and the latency rows."""
        from xml.etree import ElementTree

        from offpath.bench.plot import write_svg

        path = tmp_path / "bench.svg"
        data = report()
        write_svg(data, path)
        root = ElementTree.parse(path).getroot()
        texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
        for cell in data["cells"]:
            assert any(cell["title"] in t and cell["variant"] in t for t in texts)
        assert any(t == "pinned / background" for t in texts)
