"""The emitter and its SQS sink against the local endpoint."""

from __future__ import annotations

import time
from typing import Any

import boto3

from offpath.dev.bootstrap import ResourceNames
from offpath.emitter import Emitter, EmitterSettings, EventRecord, SqsSink
from offpath.kit import aws
from offpath.kit.aws import sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import decode_message
from offpath.v1 import analytics_pb2


def _record(i: int) -> EventRecord:
    return EventRecord(
        event_id=new_id(),
        occurred_at_ns=time.time_ns(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=f"question {i}",
        matched_skills=(("Kubernetes", 0.5), ("Helm", 0.25)),
        processing_ns=250_000,
        model="template-v1",
        token_count=12,
    )


def _drain(url: str) -> list[dict[str, Any]]:
    sqs = sqs_client()
    messages: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
        ).get("Messages", [])
        if not got:
            return messages
        messages.extend(got)  # type: ignore[arg-type]
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)
            ],
        )


def _events(messages: list[dict[str, Any]]) -> list[analytics_pb2.AnalyticsEvent]:
    events: list[analytics_pb2.AnalyticsEvent] = []
    for message in messages:
        events.extend(decode_message(message["Body"], message["MessageAttributes"]).events)
    return events


async def test_every_emitted_event_arrives_packed_in_few_requests(names: ResourceNames) -> None:
    """1,000 events reach the FIFO queue intact, in at most 5 SQS requests, each of
    which is in the call latency histogram."""
    settings = EmitterSettings(
        queue_name=names.queues.queue, producer_id="it-producer", linger_s=0.05
    )
    emitter = Emitter(SqsSink(settings), settings)
    emitter.start()
    records = [_record(i) for i in range(1000)]
    for record in records:
        assert emitter.emit(record)
    stats = await emitter.shutdown(10)
    assert stats.sent == 1000
    assert not stats.dropped
    assert stats.requests <= 5
    assert sum(stats.latencies.counts) == stats.requests
    assert stats.latencies.sum_ns > 0
    url = sqs_client().get_queue_url(QueueName=names.queues.queue)["QueueUrl"]
    messages = _drain(url)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"it-producer"}
    events = _events(messages)
    assert [e.event_id for e in events] == [r.event_id for r in records]
    assert events[0].query == "question 0"
    assert events[0].matched_skills[0].name == "Kubernetes"
    assert events[0].producer_id == "it-producer"


async def test_small_message_limit_splits_batches_within_limit(names: ResourceNames) -> None:
    """With a 4 KiB message limit every message and call stays within it and nothing is lost."""
    settings = EmitterSettings(
        queue_name=names.queues.queue, producer_id="p", linger_s=0.05, max_message_bytes=4096
    )
    emitter = Emitter(SqsSink(settings), settings)
    emitter.start()
    for i in range(120):
        emitter.emit(_record(i))
    stats = await emitter.shutdown(10)
    assert stats.sent == 120
    messages = _drain(sqs_client().get_queue_url(QueueName=names.queues.queue)["QueueUrl"])
    assert len(messages) > 1
    assert all(len(m["Body"]) <= 4096 for m in messages)
    assert len(_events(messages)) == 120


async def test_unreachable_endpoint_drops_and_counts(names: ResourceNames) -> None:
    """When SQS cannot be reached, events are counted as send_failed by the deadline, never
    lost silently, and emit keeps accepting them."""
    settings = EmitterSettings(
        queue_name=names.queues.queue,
        producer_id="p",
        linger_s=0.02,
        retry_deadline_s=0.5,
    )
    # Nothing listens on port 1: every connection is refused at once.
    sink = SqsSink(
        settings,
        client_factory=lambda: boto3.client(
            "sqs",
            endpoint_url="http://127.0.0.1:1",
            config=aws.client_config(connect_timeout=0.2, read_timeout=0.2, max_attempts=1),
        ),
    )
    emitter = Emitter(sink, settings)
    emitter.start()
    assert all(emitter.emit(_record(i)) for i in range(10))
    stats = await emitter.shutdown(5)
    assert stats.sent == 0
    assert stats.dropped["send_failed"] == 10
    assert stats.emitted == 10
