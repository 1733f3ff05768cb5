"""Prometheus metrics: background work made visible, on its own port."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offpath.client import OffpathClient
from offpath.dev.stack import DevStack


def _scrape(stack: DevStack, name: str) -> dict[str, float]:
    port = stack.children[name].metrics_port
    assert port is not None, f"{name} logged no metrics_started"
    with urllib.request.urlopen(f"http://{stack.host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("offpath_") and not sample.labels
    }


def test_emitter_and_consumer_counters_follow_the_traffic(
    stack: DevStack, client: OffpathClient
) -> None:
    """After queries are answered and stored, QueryService's metrics count the events
    enqueued and sent, and AnalyticsIngest's count the events written."""
    before_query = _scrape(stack, "query")
    before_ingest = _scrape(stack, "ingest")
    ids = [client.query(f"helm {i}").event_id for i in range(4)]
    for event_id in ids:
        client.wait_for_event(event_id, timeout=5)
    query = _scrape(stack, "query")
    ingest = _scrape(stack, "ingest")
    enqueued = "offpath_emitter_events_enqueued_total"
    sent = "offpath_emitter_events_sent_total"
    written = "offpath_ingest_events_written_total"
    assert query[enqueued] - before_query.get(enqueued, 0) >= 4
    assert query[sent] - before_query.get(sent, 0) >= 4
    # Every SendMessageBatch (counted by outcome), timed in the sender process,
    # reported back; one scrape, so both come from the same report.
    samples = _text(stack, "query")
    requests = sum(v for n, _, v in samples if n == "offpath_emitter_sqs_requests_total")
    timed = sum(
        v for n, _, v in samples if n == "offpath_emitter_sqs_request_duration_seconds_count"
    )
    assert requests >= 1
    assert timed == requests
    assert ingest[written] - before_ingest.get(written, 0) >= 4
    assert ingest["offpath_ingest_messages_deleted_total"] >= 1


def _text(stack: DevStack, name: str) -> list[tuple[str, dict[str, str], float]]:
    port = stack.children[name].metrics_port
    assert port is not None, f"{name} logged no metrics_started"
    with urllib.request.urlopen(f"http://{stack.host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_query_rpcs_and_the_process_are_measured(stack: DevStack, client: OffpathClient) -> None:
    """QueryService exposes Query's handled count by status code, its latency histogram,
    and the process's CPU and memory."""

    def handled(samples: list[tuple[str, dict[str, str], float]]) -> float:
        return sum(
            value
            for name, labels, value in samples
            if name == "grpc_server_handled_total"
            and labels.get("grpc_method") == "Query"
            and labels.get("grpc_code") == "OK"
        )

    before = handled(_text(stack, "query"))
    for i in range(3):
        client.query(f"terraform {i}")
    samples = _text(stack, "query")
    assert handled(samples) - before == 3
    names = {name for name, _, _ in samples}
    assert "grpc_server_handling_seconds_bucket" in names
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


def test_ingest_read_api_rpcs_are_measured(stack: DevStack, client: OffpathClient) -> None:
    """AnalyticsIngest counts its read API's RPCs by status code too: a GetEvent for an
    unknown id is one NOT_FOUND."""

    def not_found(samples: list[tuple[str, dict[str, str], float]]) -> float:
        return sum(
            value
            for name, labels, value in samples
            if name == "grpc_server_handled_total"
            and labels.get("grpc_method") == "GetEvent"
            and labels.get("grpc_code") == "NOT_FOUND"
        )

    before = not_found(_text(stack, "ingest"))
    with pytest.raises(grpc.RpcError) as raised:
        client.get_event("0190a3c4-1234-7abc-8def-0123456789ab")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert not_found(_text(stack, "ingest")) - before == 1
