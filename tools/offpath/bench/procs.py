"""CPU accounting from /proc, for the benchmark's "CPU per event" and for
noticing work that is not ours on the serving core.

A process's CPU is read from its POSIX CPU clock (nanoseconds, threads that
already exited included) rather than /proc/<pid>/stat, whose 10 ms ticks are
too coarse for microseconds per event; per-thread CPU comes from
/proc/<pid>/task/<tid>/sched. Each process is attributed to the cores its
affinity allows, so "serving-core CPU" is the CPU of every process of the
server's tree (the server and any sender child) that may run on the serving
core.

Linux only; on a kernel without these files the numbers are absent, never
made up.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_PROC = Path("/proc")
# /proc/stat's per-core columns counted as busy: user, nice, system. Interrupt
# and softirq time (our own loopback traffic lands there) and steal are not
# any process's CPU time, so they stay out of the comparison with it.
_BUSY_COLUMNS = (0, 1, 2)
_STEAL_COLUMN = 7


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of the whole process ``pid`` (every thread, live or exited)."""
    # The kernel's process CPU clock id: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED).
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except OSError:
        return None


def thread_cpu_ns(pid: int) -> dict[int, tuple[str, int]]:
    """Per live thread of ``pid``: (its name, CPU ns)."""
    threads: dict[int, tuple[str, int]] = {}
    with contextlib.suppress(OSError):
        for entry in (_PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                name = (entry / "comm").read_text().strip()
                for line in (entry / "sched").read_text().splitlines():
                    if line.startswith("se.sum_exec_runtime"):
                        # milliseconds with six decimals: nanoseconds
                        ms, _, frac = line.split(":", 1)[1].strip().partition(".")
                        threads[int(entry.name)] = (name, int(ms) * 1_000_000 + int(frac or 0))
                        break
    return threads


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    parent_of: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The name is in parentheses and may hold spaces; fields follow it.
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parent_of.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return sorted(found)


def affinity(pid: int) -> frozenset[int]:
    with contextlib.suppress(OSError):
        return frozenset(os.sched_getaffinity(pid))
    return frozenset()


@dataclass(frozen=True)
class ProcessCpu:
    """One process at one moment."""

    pid: int
    cpus: frozenset[int]
    cpu_ns: int
    threads: dict[int, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class TreeSnapshot:
    """A server and its descendants at one moment."""

    root: int
    processes: dict[int, ProcessCpu]
    taken_ns: int


def snapshot_tree(root: int, *, pids: Iterable[int] | None = None) -> TreeSnapshot:
    """CPU of ``root`` (with its threads) and of ``pids``, its descendants as
    found earlier (scanning /proc takes milliseconds: too long for a load
    generator's loop at the start of a window); found now when not given."""
    processes: dict[int, ProcessCpu] = {}
    for pid in dict.fromkeys((root, *(descendants(root) if pids is None else pids))):
        cpu = process_cpu_ns(pid)
        if cpu is None:
            continue
        processes[pid] = ProcessCpu(
            pid, affinity(pid), cpu, thread_cpu_ns(pid) if pid == root else {}
        )
    return TreeSnapshot(root, processes, time.perf_counter_ns())


@dataclass(frozen=True)
class TreeUsage:
    """What a server tree used between two snapshots, in ns."""

    wall_ns: int
    total_ns: int  # every process of the tree
    serving_ns: int  # processes that may run on the serving cores
    root_main_ns: int  # the server's main thread (its event loop)
    root_other_ns: int  # the server's other threads
    children_ns: int  # descendants (a sender process)
    children_serving_ns: int  # descendants that may run on the serving cores
    child_cpus: dict[int, list[int]]  # pid -> cores it may run on
    by_thread_name: dict[str, int]  # the server's threads, by name


def tree_usage(before: TreeSnapshot, after: TreeSnapshot, serving: frozenset[int]) -> TreeUsage:
    """CPU between the snapshots. A process that appeared in between counts
    from zero; one that vanished is not counted (its CPU cannot be read)."""
    total = serving_ns = children = children_serving = 0
    child_cpus: dict[int, list[int]] = {}
    for pid, now in after.processes.items():
        then = before.processes.get(pid)
        used = now.cpu_ns - (then.cpu_ns if then is not None else 0)
        total += used
        on_serving = bool(now.cpus & serving)
        if on_serving:
            serving_ns += used
        if pid != after.root:
            children += used
            child_cpus[pid] = sorted(now.cpus)
            if on_serving:
                children_serving += used
    root_now = after.processes.get(after.root)
    root_then = before.processes.get(before.root)
    main = other = 0
    by_name: dict[str, int] = {}
    if root_now is not None:
        old = root_then.threads if root_then is not None else {}
        for tid, (name, ns) in root_now.threads.items():
            used = ns - old.get(tid, (name, 0))[1]
            if tid == after.root:
                main += used
                name = "main"
            else:
                other += used
            by_name[name] = by_name.get(name, 0) + used
    return TreeUsage(
        wall_ns=after.taken_ns - before.taken_ns,
        total_ns=total,
        serving_ns=serving_ns,
        root_main_ns=main,
        root_other_ns=other,
        children_ns=children,
        children_serving_ns=children_serving,
        child_cpus=child_cpus,
        by_thread_name=by_name,
    )


@dataclass(frozen=True)
class CoreTimes:
    """/proc/stat per core: busy (user, nice, system) and steal, in ns."""

    busy_ns: dict[int, int]
    steal_ns: dict[int, int]


def core_times() -> CoreTimes:
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    busy: dict[int, int] = {}
    steal: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for line in (_PROC / "stat").read_text().splitlines():
            name, _, rest = line.partition(" ")
            if not (name.startswith("cpu") and name[3:].isdigit()):
                continue
            columns = [int(v) for v in rest.split()]
            busy[int(name[3:])] = sum(columns[i] for i in _BUSY_COLUMNS) * tick_ns
            steal[int(name[3:])] = (
                columns[_STEAL_COLUMN] * tick_ns if len(columns) > _STEAL_COLUMN else 0
            )
    return CoreTimes(busy, steal)


def busy_between(before: CoreTimes, after: CoreTimes, cores: Iterable[int]) -> tuple[int, int]:
    """(busy ns, steal ns) of ``cores`` between two readings."""
    cores = list(cores)
    busy = sum(after.busy_ns.get(c, 0) - before.busy_ns.get(c, 0) for c in cores)
    steal = sum(after.steal_ns.get(c, 0) - before.steal_ns.get(c, 0) for c in cores)
    return busy, steal
