"""RPC metrics for a grpc.aio server: how many calls each method started and
handled (by status code) and how long they took, exposed with the names and
labels of go-grpc-prometheus (``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_handling_seconds``), so
existing gRPC dashboards and alerts read them unchanged. The histogram has
one more label than go-grpc-prometheus's, ``grpc_code``, so the latency of
errors and of successes can be told apart; a query that sums over it (as
those dashboards' ``sum by (le, ...)`` do) reads the same figures.

The request path pays for a wrapper around the handler, two clock reads, a
bisect and two integer increments (the README's Performance section has
what that costs per request): counts are
plain Python integers, written only by the event loop's thread, and the
Prometheus families are built from them at scrape time, on the metrics
endpoint's thread. prometheus_client's own ``Histogram.labels().observe()``
takes a lock and a label look-up on every call (several µs), which is why it
is not used on the path. A scrape that reads a histogram while a call is
being counted can be one call behind in its sum; its buckets, its count and
the handled counter are consistent, all being the buckets' total.

What is recorded: every RPC whose handler is a coroutine function or an
async generator (as grpc.aio runs them), once, when it ends, with the
status the client saw: OK, the code given to ``set_code`` or ``abort``,
UNKNOWN for an exception (unless a non-OK code was set before it),
CANCELLED or DEADLINE_EXCEEDED when the call was cut short. Sync handlers
(run in grpc's thread pool) and unknown methods are not recorded.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import AsyncGenerator, Iterable
from typing import Any, Final

import grpc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from offpath.kit.handlers import (
    Behaviour,
    Context,
    Undecodable,
    WrappingInterceptor,
    cancelled_code,
    failed_code,
    refuse_undecodable,
    returned_code,
    streaming,
    wrapped,
)
from offpath.kit.logs import Throttle

# Seconds. Sub-millisecond resolution where a fast gRPC service lives, then
# go-grpc-prometheus's range up to 10 s.
BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BOUNDS_NS: Final = tuple(int(b * 1e9) for b in BUCKETS)
# Method names a generic handler may accept from any client: past this many
# distinct ones, further names are counted under one series.
_MAX_METHODS: Final = 256
_OTHER: Final = "/unknown/other"


_TYPES: Final = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class _Latency:
    """One method's latency histogram for one status code."""

    __slots__ = ("buckets", "sum_ns")

    def __init__(self) -> None:
        # One count per bucket of _BOUNDS_NS, then one for +Inf.
        self.buckets = [0] * (len(_BOUNDS_NS) + 1)
        self.sum_ns = 0


class _Series:
    """One method's counts: started, and handled with their latency by the
    status code the client saw (the count of each code's histogram is its
    handled count)."""

    __slots__ = ("by_code", "grpc_type", "method", "service", "started")

    def __init__(self, full_method: str, grpc_type: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self.service = service
        self.method = method
        self.grpc_type = grpc_type
        self.started = 0
        self.by_code: dict[str, _Latency] = {}

    def done(self, code: grpc.StatusCode, elapsed_ns: int) -> None:
        latency = self.by_code.get(code.name)
        if latency is None:
            latency = self.by_code[code.name] = _Latency()
        latency.buckets[bisect_left(_BOUNDS_NS, elapsed_ns)] += 1
        latency.sum_ns += elapsed_ns


class RpcMetrics(Collector):
    """The counts, the interceptor that keeps them (:attr:`interceptor`), and
    the Prometheus collector that exposes them (register it, or pass it to
    :func:`~offpath.kit.metrics.serve_metrics`)."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self.interceptor = RpcMetricsInterceptor(self)

    def series(self, full_method: str, grpc_type: str) -> _Series:
        found = self._series.get(full_method)
        if found is None:
            if len(self._series) >= _MAX_METHODS:
                full_method = _OTHER
                found = self._series.get(full_method)
            if found is None:
                found = self._series[full_method] = _Series(full_method, grpc_type)
        return found

    def activity(self) -> tuple[int, int]:
        """(calls started, calls ended) so far, over every method: equal when
        none is in flight. Sums every histogram: for a shutdown's drain, not
        the request path."""
        started = ended = 0
        for series in list(self._series.values()):
            started += series.started
            for latency in list(series.by_code.values()):
                ended += sum(latency.buckets)
        return started, ended

    def collect(self) -> Iterable[Metric]:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=labels
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by the status code the client saw.",
            labels=[*labels, "grpc_code"],
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its end, in seconds, by the status code "
            "the client saw.",
            labels=[*labels, "grpc_code"],
        )
        edges = (*(str(b) for b in BUCKETS), "+Inf")
        for series in list(self._series.values()):
            values = [series.grpc_type, series.service, series.method]
            started.add_metric(values, series.started)
            for code, latency in list(series.by_code.items()):
                counts = list(latency.buckets)
                cumulative, running = [], 0
                for edge, count in zip(edges, counts, strict=True):
                    running += count
                    cumulative.append((edge, running))
                handled.add_metric([*values, code], running)
                seconds.add_metric([*values, code], cumulative, latency.sum_ns / 1e9)
        return [started, handled, seconds]


class RpcMetricsInterceptor(WrappingInterceptor):
    """Counts every RPC into its :class:`RpcMetrics`; put it first among a
    server's interceptors, so the time it measures includes theirs.

    Being outermost, it also owns decoding the request: one that does not
    decode answers INVALID_ARGUMENT (a client's mistake, counted as such)
    instead of grpc.aio's UNKNOWN with a traceback in our log, and reaches
    no inner interceptor or servicer."""

    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__(_MAX_METHODS)
        self._metrics = metrics
        self._log_throttle = Throttle()

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        series = self._metrics.series(method, _TYPES[streaming(handler)])
        return wrapped(
            handler,
            lambda behaviour: _count_coroutine(series, method, behaviour, self._log_throttle),
            lambda behaviour: _count_generator(series, method, behaviour, self._log_throttle),
            tolerant=True,
        )


def _count_coroutine(
    series: _Series, method: str, behaviour: Behaviour, throttle: Throttle
) -> Behaviour:
    async def counted(request: Any, context: Context) -> Any:
        series.started += 1
        t0 = time.perf_counter_ns()
        try:
            if type(request) is Undecodable:
                await refuse_undecodable(request, method, context, throttle)
            response = await behaviour(request, context)
        except asyncio.CancelledError:
            series.done(cancelled_code(context), time.perf_counter_ns() - t0)
            raise
        except Exception:
            series.done(failed_code(context), time.perf_counter_ns() - t0)
            raise
        series.done(returned_code(context), time.perf_counter_ns() - t0)
        return response

    return counted


def _count_generator(
    series: _Series, method: str, behaviour: Behaviour, throttle: Throttle
) -> Behaviour:
    async def counted(request: Any, context: Context) -> AsyncGenerator[Any, None]:
        series.started += 1
        t0 = time.perf_counter_ns()
        try:
            if type(request) is Undecodable:
                await refuse_undecodable(request, method, context, throttle)
            async for response in behaviour(request, context):
                yield response
        except asyncio.CancelledError:
            series.done(cancelled_code(context), time.perf_counter_ns() - t0)
            raise
        except Exception:
            series.done(failed_code(context), time.perf_counter_ns() - t0)
            raise
        series.done(returned_code(context), time.perf_counter_ns() - t0)

    return counted
