"""Unit tests for offpath.ingest.main.run with OFFPATH_INGEST_POLLERS=0 (the read API
alone, the pod beside the Lambda function): a real grpc.aio server on loopback over
a real EventStore on FakeDynamoDb answers reads, no SQS client is made and no
consumer thread runs; with one poller the consumer thread does run, the contrast."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import MutableMapping
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from offpath.ingest import main, rollups
from offpath.ingest import settings as ingest_settings
from offpath.ingest.settings import IngestSettings
from offpath.ingest.store import EventStore, create_table_request, rollup_table_for
from offpath.kit import aws
from offpath.kit.settings import ENV_LOOP_LAG_SAMPLE_MS, ENV_SHUTDOWN_GRACE_S, SettingsError
from offpath.kit.sqs import QueueNames
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeSqs
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

TABLE = "events"
EVENT_ID = "0190a6f2-7a55-7cc1-9d2b-000000000001"
TIMEOUT_S = 10.0


def _settings(pollers: int) -> IngestSettings:
    return IngestSettings.from_env(
        {
            ingest_settings.ENV_HOST: "127.0.0.1",
            ingest_settings.ENV_PORT: "0",
            ingest_settings.ENV_METRICS_PORT: "0",
            ingest_settings.ENV_POLLERS: str(pollers),
            ingest_settings.ENV_WAIT_S: "1",
            ingest_settings.ENV_TABLE_NAME: TABLE,
            ENV_SHUTDOWN_GRACE_S: "1",
            ENV_LOOP_LAG_SAMPLE_MS: "0",
        }
    )


def _table_with_an_event() -> FakeDynamoDb:
    ddb = FakeDynamoDb()
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    event = analytics_pb2.AnalyticsEvent(event_id=EVENT_ID, service="s", method="/s/M")
    event.occurred_at.FromNanoseconds(1_790_000_000 * 10**9)
    EventStore(ddb, TABLE).write([("b-1", [event])], ingested_ns=1_790_000_001 * 10**9)
    return ddb


def _consumer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == main.CONSUMER_THREAD]


async def _serving_port(logs: list[MutableMapping[str, Any]], task: asyncio.Task[None]) -> int:
    """The gRPC port from the ``server_started`` log line, once it is there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while loop.time() < deadline:
        if task.done():
            task.result()  # raises what run() raised
        for entry in logs:
            if entry["event"] == "server_started":
                return int(entry["port"])
        await asyncio.sleep(0.01)
    raise AssertionError("run() did not log server_started in time")


@pytest.mark.parametrize("pollers", [0, 1], ids=["read-only", "one-poller"])
async def test_pollers_zero_serves_reads_without_consuming(
    monkeypatch: pytest.MonkeyPatch, pollers: int
) -> None:
    """With 0 pollers the read API answers GetEvent, no SQS client is made and no
    consumer thread runs (``consumer_off`` is logged); with 1 the thread runs."""
    ddb = _table_with_an_event()
    sqs = FakeSqs(long_poll=True)
    names = QueueNames()
    sqs.add_queue(names.queue, FifoQueue="true")
    sqs.add_queue(names.dlq, FifoQueue="true")
    made: list[str] = []

    def sqs_client(*_args: object) -> FakeSqs:
        made.append("sqs")
        return sqs

    monkeypatch.setattr(aws, "dynamodb_client", lambda *_args: ddb)
    monkeypatch.setattr(aws, "sqs_client", sqs_client)
    assert _consumer_threads() == []
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(main.run(_settings(pollers), stop))
        try:
            port = await _serving_port(logs, task)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ingest_pb2_grpc.AnalyticsIngestStub(channel)
                response = await stub.GetEvent(
                    ingest_pb2.GetEventRequest(event_id=EVENT_ID), timeout=TIMEOUT_S
                )
            assert response.event.event_id == EVENT_ID
            assert made == (["sqs"] if pollers else [])
            assert bool(_consumer_threads()) == bool(pollers)
            assert ("consumer_off" in [e["event"] for e in logs]) == (not pollers)
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT_S)
            for thread in _consumer_threads():
                thread.join(TIMEOUT_S)
    assert _consumer_threads() == []


def test_pollers_range_is_zero_to_32() -> None:
    """0 pollers is a valid setting (read API only); below 0 or above 32 fails
    naming the variable."""
    assert IngestSettings.from_env({ingest_settings.ENV_POLLERS: "0"}).pollers == 0
    for raw in ("-1", "33"):
        with pytest.raises(SettingsError, match=rf"^{ingest_settings.ENV_POLLERS}="):
            IngestSettings.from_env({ingest_settings.ENV_POLLERS: raw})
