"""Prometheus metrics on a separate HTTP port.

Nothing here touches the request path: collectors read the counters the
emitter and the consumer already keep, at scrape time. ``port`` 0 binds a
free port; the bound port is logged as ``metrics_started``.

A supervisor of worker processes serves one endpoint for all of them:
:func:`federate` merges the workers' expositions (read with :func:`scrape`
at scrape time) and labels each sample with the worker it came from.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import GCCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from offpath.kit.server import StartupError

log = structlog.get_logger("offpath.metrics")

# Where a process's private endpoints listen (a worker's /metrics, read only
# by its supervisor on the same host).
LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric: a counter (monotonic total) or a gauge, with labelled values."""

    name: str
    help: str
    kind: str  # "counter" or "gauge"
    values: Mapping[tuple[str, ...], float]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """A histogram without labels: a count per bucket (``bounds``, in the
    metric's unit, then +Inf), not cumulative, and the observations' sum."""

    name: str
    help: str
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float


def families(samples: Iterable[Sample | HistogramSample]) -> Iterator[Metric]:
    """Prometheus metric families for ``samples``."""
    for sample in samples:
        if isinstance(sample, HistogramSample):
            histogram = HistogramMetricFamily(sample.name, sample.help)
            running, buckets = 0, []
            edges = (*(repr(float(b)) for b in sample.bounds), "+Inf")
            for edge, count in zip(edges, sample.counts, strict=True):
                running += count
                buckets.append((edge, float(running)))
            histogram.add_metric([], buckets, sample.sum)
            yield histogram
            continue
        family: CounterMetricFamily | GaugeMetricFamily
        if sample.kind == "counter":
            family = CounterMetricFamily(sample.name, sample.help, labels=sample.labels)
        else:
            family = GaugeMetricFamily(sample.name, sample.help, labels=sample.labels)
        for label_values, value in sample.values.items():
            family.add_metric(list(label_values), value)
        yield family


class CallbackCollector(Collector):
    """Builds metric families from ``read()`` at every scrape."""

    def __init__(self, read: Callable[[], Iterable[Sample | HistogramSample]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return families(self._read())


def federate(sources: Iterable[tuple[str, str]], label: str) -> list[Metric]:
    """The metric families of several expositions (``(source, text)`` pairs)
    as one: families of the same name are merged, and every sample gets
    ``label=source``, so a sum over the label is the whole. A text that does
    not parse is left out and logged; the others still count."""
    merged: dict[str, Metric] = {}
    for source, text in sources:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("metrics_unparsable", source=source, error=str(exc))
            continue
        for family in parsed:
            target = merged.get(family.name)
            if target is None:
                target = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = target
            for sample in family.samples:
                target.add_sample(
                    sample.name,
                    {**sample.labels, label: source},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
    return list(merged.values())


def scrape(port: int, timeout: float, host: str = LOOPBACK) -> str:
    """The text of ``http://host:port/metrics``. Raises OSError (refused,
    timed out) or :class:`http.client.HTTPException`.

    http.client rather than urllib: urllib would honour ``http_proxy`` and
    send a loopback scrape through the host's proxy."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"/metrics answered {response.status}")
        return body.decode("utf-8")
    finally:
        connection.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not log events."""


def _server_class(host: str, port: int) -> tuple[type[WSGIServer], str]:
    """A threading WSGI server class of the address family ``host`` needs
    (an IPv6 address cannot be bound by an AF_INET server)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

    return Server, str(address[0])


class MetricsEndpoint:
    """A /metrics endpoint whose port is bound when it is made and which
    answers from :meth:`start` on, on a thread of its own.

    Split in two so that a process can claim its port (a port in use is a
    start-up error, and ``event``, by default ``metrics_started``, is logged)
    before it starts other processes, and start its thread after: a
    supervisor has no thread when it spawns its workers. Scrapes arriving in
    between wait in the backlog.
    """

    def __init__(
        self,
        host: str,
        port: int,
        collector: Collector,
        *,
        event: str = "metrics_started",
        extra: Iterable[Collector] = (),
        process: bool = True,
    ) -> None:
        registry = CollectorRegistry()
        registry.register(collector)
        for other in extra:
            registry.register(other)
        if process:
            # process_* (CPU, memory, open fds, start time) and python_gc_*:
            # prometheus_client reads them from /proc at scrape time. A
            # supervisor leaves them out: its workers' come federated, under
            # the same names.
            ProcessCollector(registry=registry)
            GCCollector(registry=registry)
        try:
            server_class, address = _server_class(host, port)
            self._server = make_server(
                address,
                port,
                make_wsgi_app(registry),
                server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise StartupError(f"cannot bind metrics port {host}:{port}: {exc}") from exc
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None
        self._stopped = False
        log.info(event, host=host, port=self.port)

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and release the port; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            # shutdown() waits for serve_forever to return: only when it runs.
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


def serve_metrics(
    host: str,
    port: int,
    read: Callable[[], Iterable[Sample | HistogramSample]],
    *,
    event: str = "metrics_started",
    extra: Iterable[Collector] = (),
) -> tuple[int, Callable[[], None]]:
    """Start the /metrics endpoint on its own thread; returns the bound port
    and a function that stops it. The bound port is logged as ``event``;
    ``extra`` collectors are exposed beside ``read``'s samples."""
    endpoint = MetricsEndpoint(host, port, CallbackCollector(read), event=event, extra=extra)
    endpoint.start()
    return endpoint.port, endpoint.stop
