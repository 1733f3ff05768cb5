"""Load generation against QueryService, measuring its own lateness.

Two shapes:

- :func:`run_load`, open loop: requests start on a fixed schedule whatever
  the server does, and each latency is measured from the request's
  *scheduled* start, so a stalled server is charged for the queue it causes
  (no coordinated omission). For latency at a given rate.
- :func:`run_closed_loop`: a fixed number of requests in flight, each
  replaced as soon as it completes. For the maximum rate a server sustains.
  The requests can be spread over several connections (``channels``): a
  server of several processes sharing a port with SO_REUSEPORT gets
  *connections* balanced over its processes by the kernel, never the calls
  of one connection, so one connection keeps one process busy.

A load generator is a program on a busy machine too. When it starts a send
late, the latency it records includes its own delay, not the server's; so it
measures itself: how far behind schedule each send really started, its own
event loop's lag, and its own CPU. :attr:`LoadResult.late` says it fell
behind (more than :data:`LATE_SHARE_LIMIT` of sends started over
:data:`LATE_NS` late), :attr:`LoadResult.kept_up` whether the server answered
at the offered rate meanwhile (when it did not, the lateness is the server's
doing: thousands of calls in flight slow the generator's loop), and
:attr:`ClosedLoopResult.saturated` when a closed loop was bound by the
generator's CPU rather than the server's. Python's cyclic garbage collector
is off while load runs (its pauses would be charged to the server).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from offpath.kit.looplag import LagSummary, LoopLagMonitor
from offpath.v1 import query_pb2, query_pb2_grpc

QUERIES = (
    "kubernetes",
    "does she know k8s?",
    "python and grpc",
    "which databases has she used?",
    "terraform",
    "observability with prometheus",
    "sqs and dynamodb",
    "vector search",
)

# A send that starts more than this behind its schedule is late ...
LATE_NS = 1_000_000
# ... and a run where more than this share of sends was late measured the
# load generator as much as the server.
LATE_SHARE_LIMIT = 0.01
# A server that answered less than this share of the offered rate while the
# schedule ran did not keep up with it.
KEPT_UP_SHARE = 0.9
# A closed loop whose generator used this share of the cores it may run on
# was limited by the generator.
SATURATED_SHARE = 0.9
# Timers fire up to 1 ms late, so sends are timed to fire up to 1 ms early.
_EARLY_NS = 1_000_000
# The generator's own loop is sampled this often (cheap: a timer).
_LAG_SAMPLE_S = 0.01

# Called with "measure_start" just before the first measured request and
# "measure_end" once the last one completed, on the generator's loop: keep
# it short (reading a few /proc files is fine).
Mark = Callable[[str], None]
# Run beside the schedule with the result as it fills (a progress display);
# cancelled once the last request completed. Costs the schedule nothing.
Watch = Callable[["LoadResult"], Coroutine[Any, Any, None]]
# Opens the channel to load (default: plaintext to ``target``).
ChannelFactory = Callable[[], grpc.aio.Channel]


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection while load runs.

    At 3,000 req/s the generator holds tens of thousands of objects (tasks,
    calls, messages), and a full collection stops its loop for 30-60 ms:
    every send due meanwhile starts late, and the pause would be charged to
    the server. The runs are bounded, so what cycles they leave waits for the
    collection at the end.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


def _cpu_s() -> float:
    """CPU of this whole process (every thread: gRPC's included)."""
    return time.process_time()


@dataclass
class LoadResult:
    """Latencies (ns, every measured request, failed ones included), what
    went wrong, and how punctual the generator itself was."""

    rate: float
    duration_s: float
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)
    # How far behind its schedule each measured send actually started.
    start_delays_ns: list[int] = field(default_factory=list)
    loop_lag: LagSummary | None = None
    cpu_s: float = 0.0  # the generator's CPU over the measured window
    wall_s: float = 0.0  # the measured window
    # Measured replies (or failures) that came back before the last send was due.
    done_by_schedule_end: int = 0

    @property
    def sends(self) -> int:
        return len(self.start_delays_ns)

    @property
    def kept_up_share(self) -> float:
        """What the server answered while the schedule ran, as a share of what
        was offered (the few still in flight at the end aside, about 1)."""
        return self.done_by_schedule_end / self.sends if self.sends else 1.0

    @property
    def kept_up(self) -> bool:
        """False when the server answered under :data:`KEPT_UP_SHARE` of the
        offered rate: a queue built up, and a late generator is then the
        server's doing (its loop minds thousands of calls in flight)."""
        return self.kept_up_share >= KEPT_UP_SHARE

    @property
    def late_starts(self) -> int:
        """Measured sends that started over :data:`LATE_NS` behind schedule."""
        return sum(1 for delay in self.start_delays_ns if delay > LATE_NS)

    @property
    def late_share(self) -> float:
        return self.late_starts / self.sends if self.sends else 0.0

    @property
    def late(self) -> bool:
        """The generator fell behind its own schedule: a tail measured in this
        run belongs to it as much as to the server."""
        return self.late_share > LATE_SHARE_LIMIT


@dataclass
class ClosedLoopResult:
    """Completions in the measured window of a closed loop."""

    concurrency: int  # in flight, over every connection
    duration_s: float
    channels: int = 1  # connections the requests were spread over
    completed: int = 0  # successful replies inside the window
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ns: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    cores: int = 1  # cores the generator may run on

    @property
    def qps(self) -> float:
        return self.completed / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_share(self) -> float:
        """The generator's CPU as a share of the cores it may use."""
        return self.cpu_s / (self.wall_s * self.cores) if self.wall_s else 0.0

    @property
    def saturated(self) -> bool:
        """The generator was CPU-bound: the rate measured may be its own."""
        return self.cpu_share >= SATURATED_SHARE


async def run_load(
    target: str,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 5.0,
    mark: Mark | None = None,
    channel: ChannelFactory | None = None,
    watch: Watch | None = None,
) -> LoadResult:
    """Offer ``rate`` requests/s for ``warmup_s + duration_s``; record the
    measured part. ``channel`` opens the channel (the command line's, with
    the client's TLS and token); ``watch`` follows the result as it fills."""
    with _no_gc_pauses():
        return await _open_loop(target, rate, duration_s, warmup_s, timeout_s, mark, channel, watch)


async def _open_loop(
    target: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
    mark: Mark | None,
    open_channel: ChannelFactory | None = None,
    watch: Watch | None = None,
) -> LoadResult:
    result = LoadResult(rate=rate, duration_s=duration_s)
    warmup = int(rate * warmup_s)
    total = warmup + int(rate * duration_s)
    interval_ns = int(1e9 / rate)
    lag = LoopLagMonitor(_LAG_SAMPLE_S)
    opened = open_channel() if open_channel is not None else grpc.aio.insecure_channel(target)
    async with opened as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        await channel.channel_ready()
        watcher = asyncio.create_task(watch(result)) if watch is not None else None

        async def one(i: int, scheduled_ns: int) -> None:
            # Lateness is taken here, where the send really starts: after the
            # timer fired and after the task got its turn on the loop.
            started_ns = time.perf_counter_ns()
            if i >= warmup:
                result.start_delays_ns.append(max(0, started_ns - scheduled_ns))
            # Late: timed from the schedule (the delay is the queue a stalled
            # server would have caused). Early: from the real start.
            origin_ns = min(started_ns, scheduled_ns)
            request = query_pb2.QueryRequest(query=QUERIES[i % len(QUERIES)])
            try:
                reply = await stub.Query(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                # A failed request still took this long: it stays in the
                # distribution (a timeout is a latency of at least the deadline).
                if i >= warmup:
                    done.append(time.perf_counter_ns())
                    result.latencies_ns.append(done[-1] - origin_ns)
                    result.errors[exc.code().name] += 1
                return
            done_ns = time.perf_counter_ns()
            latency = done_ns - origin_ns
            if i >= warmup:
                done.append(done_ns)
                result.latencies_ns.append(latency)
                if reply.event_id:
                    result.event_ids.append(reply.event_id)

        done: list[int] = []
        warm: list[asyncio.Task[None]] = []
        measured: list[asyncio.Task[None]] = []
        start = time.perf_counter_ns()
        window_start_ns = 0
        cpu_start = 0.0
        for i in range(total):
            scheduled = start + i * interval_ns
            await _until(scheduled)
            if i == warmup:
                lag.start()
                if mark is not None:
                    mark("measure_start")
                window_start_ns, cpu_start = time.perf_counter_ns(), _cpu_s()
            (measured if i >= warmup else warm).append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*measured)
        schedule_end = start + (total - 1) * interval_ns
        result.done_by_schedule_end = sum(1 for t in done if t <= schedule_end)
        result.wall_s = (time.perf_counter_ns() - window_start_ns) / 1e9
        result.cpu_s = _cpu_s() - cpu_start
        if measured:
            result.loop_lag = await lag.stop()
            if mark is not None:
                mark("measure_end")
        await asyncio.gather(*warm)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return result


async def run_closed_loop(
    target: str,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 5.0,
    mark: Mark | None = None,
    channels: int = 1,
) -> ClosedLoopResult:
    """Keep ``concurrency`` requests in flight for ``warmup_s + duration_s``;
    count what completed in the measured part.

    The requests in flight are spread evenly over ``channels`` channels, each
    its own connection (``grpc.use_local_subchannel_pool``: channels to one
    target would otherwise share one subchannel, so one connection); a
    request always goes out on the same channel as the one it replaces."""
    if channels < 1 or channels > concurrency:
        raise ValueError(f"channels must be between 1 and concurrency ({concurrency}): {channels}")
    with _no_gc_pauses():
        return await _closed_loop(
            target, concurrency, duration_s, warmup_s, timeout_s, mark, channels
        )


# Each channel its own subchannel pool, so its own connection.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


async def _closed_loop(
    target: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
    mark: Mark | None,
    channels: int,
) -> ClosedLoopResult:
    result = ClosedLoopResult(
        concurrency=concurrency,
        duration_s=duration_s,
        channels=channels,
        cores=len(os.sched_getaffinity(0)),
    )
    async with contextlib.AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(target, options=_OWN_CONNECTION)
            )
            for _ in range(channels)
        ]
        await asyncio.gather(*(channel.channel_ready() for channel in opened))
        stubs = [query_pb2_grpc.QueryServiceStub(channel) for channel in opened]
        start = time.perf_counter_ns()
        window_start = start + int(warmup_s * 1e9)
        window_end = window_start + int(duration_s * 1e9)

        async def worker(k: int) -> None:
            stub = stubs[k % channels]
            i = k
            while (sent := time.perf_counter_ns()) < window_end:
                request = query_pb2.QueryRequest(query=QUERIES[i % len(QUERIES)])
                i += concurrency
                try:
                    await stub.Query(request, timeout=timeout_s)
                    code = None
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                done = time.perf_counter_ns()
                if window_start <= done < window_end:
                    result.latencies_ns.append(done - sent)
                    if code is None:
                        result.completed += 1
                    else:
                        result.errors[code] += 1

        async def window() -> None:
            await asyncio.sleep(max(0.0, (window_start - time.perf_counter_ns()) / 1e9))
            if mark is not None:
                mark("measure_start")
            began, cpu = time.perf_counter_ns(), _cpu_s()
            await asyncio.sleep(max(0.0, (window_end - time.perf_counter_ns()) / 1e9))
            result.cpu_s = _cpu_s() - cpu
            result.wall_s = (time.perf_counter_ns() - began) / 1e9
            if mark is not None:
                mark("measure_end")

        await asyncio.gather(window(), *(worker(k) for k in range(concurrency)))
    return result


async def _until(when_ns: int) -> None:
    """Wait until at most :data:`_EARLY_NS` before ``when_ns`` (perf_counter).

    asyncio's timers fire up to 1 ms late on Linux (the epoll selector rounds
    its timeout up to whole milliseconds), which would make a fifth of the
    sends at 200 req/s "late" by themselves. So the timer is set 1 ms early
    and fires between 1 ms early and on time; a send that starts early is
    timed from its real start. (Spinning until the exact moment would keep
    the GIL from gRPC's completion-queue thread and delay replies.)
    """
    delay = when_ns - time.perf_counter_ns() - _EARLY_NS
    if delay > 0:
        await asyncio.sleep(delay / 1e9)


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def histogram(values_ns: list[int], *, per_octave: int = 8) -> list[tuple[float, int]]:
    """Log-bucketed counts (upper bound in ms, count), 8 buckets per doubling."""
    if not values_ns:
        return []
    bounds: list[float] = []
    bound = 0.05  # ms
    top = max(values_ns) / 1e6
    while bound < top * 2:
        bounds.append(bound)
        bound *= 2 ** (1 / per_octave)
    counts = [0] * len(bounds)
    for value in values_ns:
        counts[min(bisect.bisect_left(bounds, value / 1e6), len(bounds) - 1)] += 1
    return [(round(b, 4), c) for b, c in zip(bounds, counts, strict=True) if c]
