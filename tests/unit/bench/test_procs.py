"""CPU accounting from /proc: process and thread clocks, a server's tree,
attribution to the serving core."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from offpath.bench.procs import (
    ProcessCpu,
    TreeSnapshot,
    busy_between,
    core_times,
    descendants,
    process_cpu_ns,
    thread_cpu_ns,
    tree_usage,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _spin(seconds: float) -> None:
    """Use this much CPU (not wall time: a busy machine may preempt us)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield child
    child.kill()
    child.wait()


class TestClocks:
    def test_process_clock_counts_this_process_in_nanoseconds(self) -> None:
        """50 ms of CPU shows as 50 ms more on the process clock (finer than
        /proc's 10 ms ticks)."""
        before = process_cpu_ns(os.getpid())
        _spin(0.05)
        after = process_cpu_ns(os.getpid())
        assert before is not None
        assert after is not None
        assert 50_000_000 <= after - before <= 500_000_000

    def test_a_process_that_is_gone_has_no_clock(self, sleeper: subprocess.Popen[bytes]) -> None:
        """A pid that no longer exists reads as None, not as zero."""
        pid = sleeper.pid
        sleeper.kill()
        sleeper.wait()
        assert process_cpu_ns(pid) is None

    def test_threads_include_the_main_thread(self) -> None:
        """The main thread's id is the pid; its CPU is there, with its name."""
        threads = thread_cpu_ns(os.getpid())
        assert os.getpid() in threads
        name, ns = threads[os.getpid()]
        assert name
        assert ns > 0


def test_descendants_find_a_child(sleeper: subprocess.Popen[bytes]) -> None:
    """A process this one started is among its descendants."""
    assert sleeper.pid in descendants(os.getpid())


def test_core_times_cover_every_core() -> None:
    """/proc/stat gives busy time per core, and it only grows."""
    before = core_times()
    _spin(0.02)
    after = core_times()
    assert set(before.busy_ns) == set(range(len(before.busy_ns)))
    busy, steal = busy_between(before, after, before.busy_ns)
    assert busy >= 0
    assert steal >= 0


def _snapshot(processes: list[ProcessCpu], taken_ns: int) -> TreeSnapshot:
    return TreeSnapshot(100, {p.pid: p for p in processes}, taken_ns)


class TestTreeUsage:
    def test_attribution_to_the_serving_core(self) -> None:
        """The server on core 0 and a sender process moved to core 1: the
        serving core's CPU is the server's only; the tree's total has both."""
        serving = frozenset({0})
        before = _snapshot(
            [
                ProcessCpu(100, frozenset({0}), 1_000, {100: ("python", 700), 101: ("grpc", 300)}),
                ProcessCpu(200, frozenset({1}), 50),
            ],
            0,
        )
        after = _snapshot(
            [
                ProcessCpu(
                    100, frozenset({0}), 5_000, {100: ("python", 3_700), 101: ("grpc", 1_300)}
                ),
                ProcessCpu(200, frozenset({1}), 2_050),
            ],
            10_000,
        )
        usage = tree_usage(before, after, serving)
        assert usage.serving_ns == 4_000
        assert usage.total_ns == 6_000
        assert usage.children_ns == 2_000
        assert usage.children_serving_ns == 0
        assert (usage.root_main_ns, usage.root_other_ns) == (3_000, 1_000)
        assert usage.by_thread_name == {"main": 3_000, "grpc": 1_000}
        assert usage.child_cpus == {200: [1]}
        assert usage.wall_ns == 10_000

    def test_a_child_that_may_run_on_the_serving_core_counts_there(self) -> None:
        """A sender process allowed on every core is serving-core CPU too; one
        that appeared during the window counts from zero."""
        before = _snapshot([ProcessCpu(100, frozenset({0, 1}), 0)], 0)
        after = _snapshot(
            [ProcessCpu(100, frozenset({0, 1}), 10), ProcessCpu(300, frozenset({0, 1}), 7)], 1
        )
        usage = tree_usage(before, after, frozenset({0, 1}))
        assert usage.serving_ns == 17
        assert usage.children_serving_ns == 7
