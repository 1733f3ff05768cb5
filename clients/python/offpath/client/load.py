"""Open-loop load: requests start on a fixed schedule, whatever the server
does, and each latency is measured from the request's *scheduled* start, so
a stalled server is charged for the queue it causes (no coordinated
omission)."""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

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


@dataclass
class LoadResult:
    """Latencies (ns, every measured request, failed ones included) and what
    went wrong."""

    rate: float
    duration_s: float
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)
    late_starts: int = 0  # sends that began over 1 ms behind schedule (client overload)


async def run_load(
    target: str,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 5.0,
) -> LoadResult:
    """Offer ``rate`` requests/s for ``warmup_s + duration_s``; record the
    measured part."""
    result = LoadResult(rate=rate, duration_s=duration_s)
    warmup = int(rate * warmup_s)
    total = warmup + int(rate * duration_s)
    interval_ns = int(1e9 / rate)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        await channel.channel_ready()

        async def one(i: int, scheduled_ns: int) -> None:
            request = query_pb2.QueryRequest(query=QUERIES[i % len(QUERIES)])
            try:
                reply = await stub.Query(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                # A failed request still took this long: it stays in the
                # distribution (a timeout is a latency of at least the deadline).
                if i >= warmup:
                    result.latencies_ns.append(time.perf_counter_ns() - scheduled_ns)
                    result.errors[exc.code().name] += 1
                return
            latency = time.perf_counter_ns() - scheduled_ns
            if i >= warmup:
                result.latencies_ns.append(latency)
                if reply.event_id:
                    result.event_ids.append(reply.event_id)

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter_ns()
        for i in range(total):
            scheduled = start + i * interval_ns
            delay = (scheduled - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001 and i >= warmup:
                result.late_starts += 1
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    return result


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
