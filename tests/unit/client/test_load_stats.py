"""The load generator's statistics and its measurement of itself: nearest-rank
percentiles, the log histogram, late sends and a saturated closed loop."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from offpath.client.load import (
    LATE_NS,
    ClosedLoopResult,
    LoadResult,
    histogram,
    percentile,
    run_closed_loop,
    run_load,
)
from offpath.v1 import query_pb2, query_pb2_grpc


class TestPercentile:
    def test_nearest_rank(self) -> None:
        """p50 of 1..100 is 50, p99 is 99, p100 is 100 (nearest rank, no interpolation)."""
        values = list(range(1, 101))
        assert percentile(values, 50) == 50
        assert percentile(values, 99) == 99
        assert percentile(values, 100) == 100

    def test_small_samples_take_the_worst_for_high_percentiles(self) -> None:
        """With ten samples p99 is the largest one, not an average of neighbours."""
        assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000], 99) == 1000

    def test_empty_is_nan(self) -> None:
        """No samples give NaN rather than a made-up number."""
        assert math.isnan(percentile([], 50))


class TestHistogram:
    def test_counts_every_value_once(self) -> None:
        """Every latency lands in exactly one bucket whose bound is at least the value."""
        values_ns = [int(ms * 1e6) for ms in (0.01, 0.5, 0.51, 2.0, 2.0, 7.5, 120.0)]
        buckets = histogram(values_ns)
        assert sum(count for _, count in buckets) == len(values_ns)
        bounds = [bound for bound, _ in buckets]
        assert bounds == sorted(bounds)
        assert bounds[-1] >= 120.0

    def test_empty(self) -> None:
        """No samples, no buckets."""
        assert histogram([]) == []


class TestLateness:
    def test_late_share_counts_sends_over_a_millisecond_behind(self) -> None:
        """Only sends that started more than 1 ms behind schedule are late."""
        result = LoadResult(rate=100, duration_s=1)
        result.start_delays_ns = [0] * 97 + [LATE_NS, LATE_NS + 1, 5 * LATE_NS]
        assert result.late_starts == 2
        assert result.late_share == pytest.approx(0.02)
        assert result.late

    def test_one_percent_is_not_yet_late(self) -> None:
        """A run with 1 % of sends late is still evidence about the server."""
        result = LoadResult(rate=100, duration_s=1)
        result.start_delays_ns = [0] * 99 + [2 * LATE_NS]
        assert not result.late

    def test_no_sends_is_not_late(self) -> None:
        """An empty run is not called late (nor anything else)."""
        assert LoadResult(rate=1, duration_s=0).late_share == 0.0

    def test_a_server_that_fell_behind_did_not_keep_up(self) -> None:
        """Answering 80 of 100 sends while the schedule ran is not keeping up."""
        result = LoadResult(rate=100, duration_s=1, start_delays_ns=[0] * 100)
        result.done_by_schedule_end = 99
        assert result.kept_up
        result.done_by_schedule_end = 80
        assert not result.kept_up

    def test_closed_loop_saturated_by_its_own_cpu(self) -> None:
        """A closed loop whose generator used 95 % of its core measured itself."""
        busy = ClosedLoopResult(concurrency=32, duration_s=2, cpu_s=1.9, wall_s=2.0, cores=1)
        idle = ClosedLoopResult(concurrency=32, duration_s=2, cpu_s=0.9, wall_s=2.0, cores=1)
        assert busy.saturated
        assert not idle.saturated
        assert ClosedLoopResult(concurrency=1, duration_s=1, completed=500, wall_s=2.0).qps == 250


class _Echo(query_pb2_grpc.QueryServiceServicer):
    """Answers at once; with ``serve_s``, one request at a time, each taking
    that long (without blocking the loop the generator shares)."""

    def __init__(self, serve_s: float = 0.0) -> None:
        self._serve_s = serve_s
        self._one_at_a_time = asyncio.Lock()
        # Requests answered, by the client's address and port (its connection).
        self.peers: Counter[str] = Counter()

    async def Query(
        self,
        request: query_pb2.QueryRequest,
        context: grpc.aio.ServicerContext[query_pb2.QueryRequest, query_pb2.QueryResponse],
    ) -> query_pb2.QueryResponse:
        self.peers[context.peer()] += 1
        if self._serve_s:
            async with self._one_at_a_time:
                await asyncio.sleep(self._serve_s)
        return query_pb2.QueryResponse(answer=request.query, event_id="e")


@asynccontextmanager
async def _serving(servicer: _Echo) -> AsyncIterator[str]:
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def target() -> AsyncIterator[str]:
    async with _serving(_Echo()) as address:
        yield address


class TestGeneratorMeasuresItself:
    async def test_a_stalled_generator_reports_itself_late(self, target: str) -> None:
        """When the generator's own loop stalls (here: 60 ms inside its
        measure_start hook), the sends due meanwhile start late and the run is
        flagged as the generator's, not the server's."""
        marks: list[str] = []

        def stall(what: str) -> None:
            marks.append(what)
            if what == "measure_start":
                time.sleep(0.06)

        result = await run_load(target, rate=200, duration_s=0.5, warmup_s=0.05, mark=stall)
        assert marks == ["measure_start", "measure_end"]
        assert result.sends == len(result.latencies_ns) == 100
        assert result.late_starts >= 5
        assert result.late
        assert result.loop_lag is not None
        assert result.event_ids == ["e"] * 100

    async def test_no_garbage_collection_pauses_while_loading(self, target: str) -> None:
        """The cyclic GC is off during a run (a full collection would stall the
        generator for tens of ms at high rates) and back on afterwards."""
        seen: list[bool] = []
        await run_load(
            target,
            rate=100,
            duration_s=0.05,
            warmup_s=0.0,
            mark=lambda _: seen.append(gc.isenabled()),
        )
        await run_closed_loop(
            target,
            concurrency=2,
            duration_s=0.05,
            warmup_s=0.0,
            mark=lambda _: seen.append(gc.isenabled()),
        )
        assert seen == [False] * 4
        assert gc.isenabled()

    async def test_a_server_slower_than_the_offered_rate_did_not_keep_up(self) -> None:
        """A server that takes 20 ms per request, one at a time (50 req/s),
        offered 200 req/s answers about a quarter of the offered rate while
        the schedule runs: the generator records that it fell behind."""
        async with _serving(_Echo(serve_s=0.02)) as address:
            result = await run_load(address, rate=200, duration_s=0.25, warmup_s=0.0)
        assert result.kept_up_share < 0.5
        assert not result.kept_up
        assert result.sends == len(result.latencies_ns) == 50

    async def test_closed_loop_counts_completions_in_the_window(self, target: str) -> None:
        """A closed loop reports what completed in its measured window, and
        marks the window for the caller's CPU readings."""
        marks: list[str] = []
        result = await run_closed_loop(
            target, concurrency=4, duration_s=0.3, warmup_s=0.05, mark=marks.append
        )
        assert marks == ["measure_start", "measure_end"]
        assert result.completed > 0
        assert not result.errors
        assert result.wall_s == pytest.approx(0.3, abs=0.1)
        assert result.qps == pytest.approx(result.completed / result.wall_s)


class TestConnections:
    async def test_one_channel_is_one_connection(self) -> None:
        """By default every request in flight shares one connection."""
        servicer = _Echo()
        async with _serving(servicer) as address:
            result = await run_closed_loop(address, concurrency=4, duration_s=0.1, warmup_s=0.0)
        assert result.channels == 1
        assert len(servicer.peers) == 1

    async def test_requests_are_spread_over_one_connection_per_channel(self) -> None:
        """With 4 channels the server sees 4 connections (4 client ports), each
        carrying a share of the load: a server of several processes on one
        SO_REUSEPORT port gets connections, not calls, balanced over them."""
        servicer = _Echo()
        async with _serving(servicer) as address:
            result = await run_closed_loop(
                address, concurrency=8, duration_s=0.2, warmup_s=0.0, channels=4
            )
        assert result.channels == 4
        assert result.concurrency == 8
        assert len(servicer.peers) == 4
        total = sum(servicer.peers.values())
        # Two requests in flight on each: each connection carries about a quarter.
        assert all(count > total / 8 for count in servicer.peers.values()), servicer.peers
        assert result.completed > 0
        assert not result.errors

    async def test_channels_between_one_and_the_requests_in_flight(self, target: str) -> None:
        """A channel with no request in flight, or none at all, is a mistake."""
        for channels in (0, 5):
            with pytest.raises(ValueError, match="channels"):
                await run_closed_loop(
                    target, concurrency=4, duration_s=0.1, warmup_s=0.0, channels=channels
                )
