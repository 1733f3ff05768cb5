"""Unit tests for offpath.kit.metrics: an endpoint that binds before it serves, scraping
it, and federating several processes' metrics under one label."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterable

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from offpath.kit.metrics import (
    CallbackCollector,
    MetricsEndpoint,
    Sample,
    federate,
    scrape,
    serve_metrics,
)
from offpath.kit.server import StartupError

TIMEOUT_S = 5.0


def _exposition(enqueued: float, dropped: dict[str, float]) -> str:
    samples = [
        Sample(
            "offpath_emitter_events_enqueued_total", "Events enqueued.", "counter", {(): enqueued}
        ),
        Sample(
            "offpath_emitter_events_dropped_total",
            "Events dropped.",
            "counter",
            {(reason,): n for reason, n in dropped.items()},
            ("reason",),
        ),
        Sample("offpath_emitter_buffered_events", "Buffered.", "gauge", {(): 3.0}),
    ]
    registry = CollectorRegistry()
    registry.register(CallbackCollector(lambda: samples))
    return generate_latest(registry).decode()


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_federate_labels_every_sample_with_its_source_and_merges_families() -> None:
    """Two workers' expositions become one exposition, one family per name, in which each
    sample carries worker=<its source> and its own value."""
    merged = federate(
        [
            ("0", _exposition(5, {"queue_full": 1})),
            ("1", _exposition(7, {"queue_full": 2, "shutdown": 4})),
        ],
        "worker",
    )
    assert sorted(m.name for m in merged) == [
        "offpath_emitter_buffered_events",
        "offpath_emitter_events_dropped",
        "offpath_emitter_events_enqueued",
    ]
    registry = CollectorRegistry()
    registry.register(_Fixed(merged))
    values = _values(generate_latest(registry).decode())
    enqueued = "offpath_emitter_events_enqueued_total"
    dropped = "offpath_emitter_events_dropped_total"
    assert values[(enqueued, (("worker", "0"),))] == 5
    assert values[(enqueued, (("worker", "1"),))] == 7
    assert values[(dropped, (("reason", "queue_full"), ("worker", "1")))] == 2
    assert values[(dropped, (("reason", "shutdown"), ("worker", "1")))] == 4
    assert values[("offpath_emitter_buffered_events", (("worker", "0"),))] == 3


def test_federate_leaves_out_a_text_that_does_not_parse() -> None:
    """One worker's garbled answer costs its own samples only."""
    merged = federate([("0", "this is { not metrics\n"), ("1", _exposition(2, {}))], "worker")
    labels = {s.labels["worker"] for m in merged for s in m.samples}
    assert labels == {"1"}


def _port_is_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # A scraped port may sit in TIME_WAIT; only a listener should count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_endpoint_holds_its_port_from_construction_and_answers_once_started() -> None:
    """The port is taken as soon as the endpoint exists (before its thread starts), scrapes
    are answered after start(), and stop() twice is safe."""
    endpoint = MetricsEndpoint(
        "127.0.0.1", 0, CallbackCollector(lambda: [Sample("offpath_x", "x", "gauge", {(): 11})])
    )
    try:
        assert _port_is_taken(endpoint.port)
        endpoint.start()
        text = scrape(endpoint.port, TIMEOUT_S)
        assert _values(text)[("offpath_x", ())] == 11
    finally:
        endpoint.stop()
        endpoint.stop()
    assert not _port_is_taken(endpoint.port)


def test_endpoint_never_started_stops_at_once() -> None:
    """An endpoint whose thread never started (start-up failed elsewhere) releases its port
    on stop() without waiting for a serve loop that never ran."""
    endpoint = MetricsEndpoint("127.0.0.1", 0, CallbackCollector(list))
    endpoint.stop()
    assert not _port_is_taken(endpoint.port)


def test_metrics_port_in_use_is_a_startup_error() -> None:
    """A metrics port someone else holds is a StartupError naming it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot bind metrics port 127.0.0.1:{port}"):
            serve_metrics("127.0.0.1", port, list)


def _answer_once(server: socket.socket, response: bytes) -> None:
    conn, _ = server.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(response)


def test_scrape_raises_on_a_refused_connection_and_on_an_error_status() -> None:
    """scrape() reports a dead worker (connection refused) and an error status as errors,
    never as metrics."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        scrape(free, TIMEOUT_S)
    with socket.create_server(("127.0.0.1", 0)) as server:
        answer = threading.Thread(
            target=_answer_once,
            args=(server, b"HTTP/1.0 500 Oops\r\nContent-Length: 2\r\n\r\nno"),
        )
        answer.start()
        try:
            with pytest.raises(http.client.HTTPException, match="500"):
                scrape(server.getsockname()[1], TIMEOUT_S)
        finally:
            answer.join(TIMEOUT_S)
