"""Prometheus metrics on a separate HTTP port.

Nothing here touches the request path: collectors read the counters the
emitter and the consumer already keep, at scrape time. ``port`` 0 binds a
free port; the bound port is logged as ``metrics_started``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from offpath.kit.server import StartupError

log = structlog.get_logger("offpath.metrics")


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric: a counter (monotonic total) or a gauge, with labelled values."""

    name: str
    help: str
    kind: str  # "counter" or "gauge"
    values: Mapping[tuple[str, ...], float]
    labels: tuple[str, ...] = ()


class CallbackCollector(Collector):
    """Builds metric families from ``read()`` at every scrape."""

    def __init__(self, read: Callable[[], Iterable[Sample]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        for sample in self._read():
            family: CounterMetricFamily | GaugeMetricFamily
            if sample.kind == "counter":
                family = CounterMetricFamily(sample.name, sample.help, labels=sample.labels)
            else:
                family = GaugeMetricFamily(sample.name, sample.help, labels=sample.labels)
            for label_values, value in sample.values.items():
                family.add_metric(list(label_values), value)
            yield family


def serve_metrics(
    host: str, port: int, read: Callable[[], Iterable[Sample]]
) -> tuple[int, Callable[[], None]]:
    """Start the /metrics endpoint on its own thread; returns the bound port
    and a function that stops it."""
    registry = CollectorRegistry()
    registry.register(CallbackCollector(read))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise StartupError(f"cannot bind metrics port {host}:{port}: {exc}") from exc
    bound = int(server.server_address[1])
    log.info("metrics_started", host=host, port=bound)

    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:  # safe to call twice
            return
        stopped = True
        server.shutdown()
        server.server_close()
        thread.join(5)

    return bound, stop
