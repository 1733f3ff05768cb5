"""The benchmark run's own judgements: which runs are disturbed (and by
whom), the longest analytics burst on the serving core, which sender variant
duplicates the default, and the small parsers (the server's metrics, the one
line that says why a variant did not start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offpath.bench import procs
from offpath.bench.goals import CORE_SHARED, GENERATOR_LATE, GENERATOR_SATURATED
from offpath.bench.plan import PROFILES, VARIANTS
from offpath.bench.run import ModeRunner, _Window, main, parse_metrics, start_failure
from offpath.client.load import LATE_NS, ClosedLoopResult, LoadResult
from offpath.dev.stack import StartError


@pytest.fixture
def runner(tmp_path: Path) -> ModeRunner:
    """A pinned runner (serving core 0); nothing is started."""
    profile = PROFILES["smoke"]
    return ModeRunner("pinned", profile, profile.phases, tmp_path, frozenset({0}), frozenset({1}))


def _open_loop(late: int, answered: int, sends: int = 100) -> LoadResult:
    result = LoadResult(rate=100, duration_s=1)
    result.start_delays_ns = [2 * LATE_NS] * late + [0] * (sends - late)
    result.done_by_schedule_end = answered
    return result


class TestDisturbances:
    def test_a_late_generator_disturbs_the_run(self, runner: ModeRunner) -> None:
        """5 % of sends late while the server kept up: the generator's fault."""
        assert runner._disturbances(_open_loop(late=5, answered=100), {}) == [GENERATOR_LATE]

    def test_late_because_the_server_fell_behind_counts_against_the_server(
        self, runner: ModeRunner
    ) -> None:
        """Late sends while the server answered a third of the offered rate are
        the server's doing: the run is not disturbed, it is evidence."""
        assert runner._disturbances(_open_loop(late=50, answered=30), {}) == []

    def test_other_work_on_the_serving_core(self, runner: ModeRunner) -> None:
        """Over 10 % of the serving core used by a program not ours disturbs the
        run, and is named first."""
        found = runner._disturbances(
            _open_loop(late=5, answered=100), {"foreign_serving_share": 0.4}
        )
        assert found == [CORE_SHARED, GENERATOR_LATE]
        assert runner._disturbances(_open_loop(0, 100), {"foreign_serving_share": 0.05}) == []

    def test_a_saturated_closed_loop(self, runner: ModeRunner) -> None:
        """A closed loop whose generator used its whole core measured itself."""
        busy = ClosedLoopResult(concurrency=32, duration_s=1, cpu_s=0.95, wall_s=1.0, cores=1)
        assert runner._disturbances(busy, {}) == [GENERATOR_SATURATED]


class TestBurst:
    def test_a_sender_process_on_another_core_does_not_count(self, runner: ModeRunner) -> None:
        """With the sender process moved to core 1, the serving core's longest
        analytics burst is the emitter's slice on the loop."""
        fields: dict[str, Any] = {
            "emitter": {"sender": "process", "loop_slice_max_us": 210.0, "sender_pid": 7},
            "sender_stopped": {"burst_max_us": 4000.0, "pid": 7},
        }
        burst = runner._burst(fields, VARIANTS["background"], {"child_cpus": {"7": [1]}})
        assert burst["sender_on_serving_core"] is False
        assert burst["max_ms"] == 0.21
        assert burst["complete"] is True

    def test_a_sender_process_allowed_on_the_serving_core_counts(self, runner: ModeRunner) -> None:
        """A sender process that may run on core 0 puts its burst there."""
        fields: dict[str, Any] = {
            "emitter": {"sender": "process", "loop_slice_max_us": 210.0, "sender_pid": 7},
            "sender_stopped": {"burst_max_us": 4000.0, "pid": 7},
        }
        burst = runner._burst(fields, VARIANTS["background"], {"child_cpus": {"7": [0, 1]}})
        assert burst["max_ms"] == 4.0

    def test_a_thread_without_a_logged_loop_slice_is_a_lower_bound(
        self, runner: ModeRunner
    ) -> None:
        """The thread sender's burst is on the serving core; with no loop slice
        logged the figure is incomplete, and says which field is missing."""
        fields: dict[str, Any] = {"emitter": {"sender": "thread", "sender_burst_max_us": 4400.0}}
        burst = runner._burst(fields, VARIANTS["background-thread"], {})
        assert burst["max_ms"] == 4.4
        assert burst["complete"] is False
        assert "loop_slice_max_us" in burst["missing"]


def test_the_variant_naming_the_default_sender_is_skipped(runner: ModeRunner) -> None:
    """Once background's log says it used the process sender,
    background-process would measure the same server again: it is skipped;
    a variant that already ran is kept so its rounds stay complete."""
    runner._ran.add("background-thread")
    runner._learn_default("process")
    assert runner.default_sender == "process"
    assert "background-process" in runner.duplicates
    runner._learn_default("thread")
    assert "background-thread" not in runner.duplicates


def test_metrics_counters_by_name() -> None:
    """Counters lose their _total suffix, labelled samples add up, comments
    and junk are skipped."""
    text = "\n".join(
        [
            "# HELP offpath_emitter_events_sent Events SQS accepted.",
            "# TYPE offpath_emitter_events_sent counter",
            "offpath_emitter_events_sent_total 1600.0",
            "offpath_emitter_sqs_requests_total 8.0",
            'offpath_emitter_events_dropped_total{reason="queue_full"} 2.0',
            'offpath_emitter_events_dropped_total{reason="shutdown"} 1.0',
            "garbage",
            "",
        ]
    )
    assert parse_metrics(text) == {
        "offpath_emitter_events_sent": 1600.0,
        "offpath_emitter_sqs_requests": 8.0,
        "offpath_emitter_events_dropped": 3.0,
    }


def test_start_failure_is_the_services_one_line() -> None:
    """A service refusing a setting prints one plain line; that is the reason."""
    error = StartError(
        "001-latency-background-process exited with code 2 while starting; its last output:\n"
        "offpath-query: OFFPATH_EMIT_SENDER='process' must be one of: thread"
    )
    assert (
        start_failure(error)
        == "offpath-query: OFFPATH_EMIT_SENDER='process' must be one of: thread"
    )


def test_start_failure_from_a_log_record() -> None:
    """Without a plain line, the error of the last JSON record that has one."""
    error = StartError(
        "x exited with code 2 while starting; its last output:\n"
        '{"event": "startup_failed", "error": "cannot bind gRPC port"}\n'
        '{"event": "shutdown_complete"}'
    )
    assert start_failure(error) == "cannot bind gRPC port"


class TestWorkers:
    """Multi-process serving in the bench: the phase's plan, what a
    supervisor's log and CPU say about its workers, and --phases."""

    def test_the_workers_phase_runs_unpinned_only(self) -> None:
        """Pinning the supervisor would pin its workers to the same core, so
        the phase is only among the unpinned phases: in full, 1 and 2
        workers, analytics off and background, 8 connections x 4 in flight."""
        for profile in PROFILES.values():
            assert "workers" not in [p.name for p in profile.phases]
        (phase,) = [p for p in PROFILES["full"].unpinned_phases if p.name == "workers"]
        assert phase.concurrency == 32
        assert phase.channels == 8
        for name in phase.variants:
            variant = VARIANTS[name]
            assert variant.workers == (2 if variant.one_worker else 1)
            assert variant.one_worker in (None, *phase.variants)
        assert {VARIANTS[n].one_worker for n in phase.variants} == {None, "off", "background"}

    def test_only_some_phases(self) -> None:
        """--phases keeps the named phases in either mode."""
        full = PROFILES["full"].only({"workers"})
        assert full.phases == ()
        assert [p.name for p in full.unpinned_phases] == ["workers"]

    def test_a_supervisors_log_gives_its_workers(self, runner: ModeRunner) -> None:
        """With 2 workers, the server is described per worker (each line says
        which wrote it); one worker's loop lag is not the server's."""
        records: list[dict[str, Any]] = [
            {"event": "worker_serving", "worker": 0},
            {"event": "loop_lag", "worker": 0, "p99_ms": 1.5},
            {"event": "emitter_stopped", "worker": 0, "enqueued": 10, "sent": 10},
            {"event": "server_started", "port": 1, "workers": 2, "worker_pids": [11, 12]},
            {"event": "loop_lag", "worker": 1, "p99_ms": 2.0},
            {"event": "emitter_stopped", "worker": 1, "enqueued": 7, "sent": 6},
        ]
        fields = runner._server_fields(records, VARIANTS["background-2-workers"], {})
        assert fields == {
            "workers": 2,
            "worker_pids": [11, 12],
            "per_worker": {
                "0": {"loop_lag_p99_ms": 1.5, "enqueued": 10, "sent": 10},
                "1": {"loop_lag_p99_ms": 2.0, "enqueued": 7, "sent": 6},
            },
        }
        single = runner._server_fields(
            [{"event": "server_started", "port": 1}, {"event": "loop_lag", "p99_ms": 1.0}],
            VARIANTS["off"],
            {},
        )
        assert single["workers"] == 1
        assert single["loop_lag"]["p99_ms"] == 1.0

    def test_each_workers_cpu_as_a_share_of_one_core(self) -> None:
        """Each worker's own CPU over the window (its sender aside); a worker
        that was not there at both ends is not given a made-up share."""
        cores = frozenset({0, 1})

        def tree(taken_ns: int, cpu: dict[int, int]) -> procs.TreeSnapshot:
            return procs.TreeSnapshot(
                10,
                {pid: procs.ProcessCpu(pid, cores, ns) for pid, ns in cpu.items()},
                taken_ns,
            )

        window = _Window(root=10, tree=[10, 11, 12], ours=[], serving=cores)
        times = procs.CoreTimes({}, {})
        window.before = (tree(0, {10: 0, 11: 0, 12: 0}), times, {})
        window.after = (
            tree(2_000_000_000, {10: 10**8, 11: 18 * 10**8, 12: 14 * 10**8, 13: 10**8}),
            times,
            {},
        )
        cpu, _ = window.summary(1000, [11, 12, 13])
        assert cpu["worker_busy_shares"] == [0.9, 0.7]
        single, _ = window.summary(1000)
        assert "worker_busy_shares" not in single

    def test_unknown_or_absent_phases_are_refused(self, tmp_path: Path) -> None:
        """--phases names phases; one that does not run in the profile's modes
        is an error before anything starts."""
        for argv in (
            ["--phases", "nope"],
            ["--profile", "quick", "--phases", "workers"],
            ["--profile", "full", "--phases", "workers", "--modes", "pinned"],
        ):
            with pytest.raises(SystemExit):
                main([*argv, "--out", str(tmp_path)])
        assert list(tmp_path.iterdir()) == []
