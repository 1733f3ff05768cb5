"""AnalyticsIngest's consumer and store against the local endpoint: SQS in,
DynamoDB out, poison to the DLQ."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.store import EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, REASON_ATTRIBUTE
from offpath.v1 import analytics_pb2

_NS = 1_000_000_000


def _event(
    occurred_ns: int, query: str = "kubernetes", status: int = 0
) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=new_id(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=query,
        model="template-v1",
        token_count=7,
        status_code=status,
        producer_id="it",
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    event.processing_time.FromNanoseconds(2_000_000)
    event.matched_skills.add(name="Kubernetes", score=0.5)
    return event


def _send(names: ResourceNames, events: list[analytics_pb2.AnalyticsEvent]) -> None:
    settings = EmitterSettings(queue_name=names.queues.queue, producer_id="it")
    result = SqsSink(settings).export(events, deadline=time.monotonic() + 10)
    assert result.sent == len(events)


def _consume_all(consumer: Consumer) -> None:
    while consumer.poll_once():
        pass


def _consumer(names: ResourceNames, store: EventStore) -> Consumer:
    """A consumer that looks its queues up by name, as the service does."""
    consumer = Consumer(sqs_client(), store, Queues(names.queues), wait_seconds=0)
    assert consumer.resolve(threading.Event())
    return consumer


def _store(resources: Resources) -> EventStore:
    return EventStore(dynamodb_client(), resources.table, shards=4)


def test_events_are_written_and_messages_deleted(
    resources: Resources, names: ResourceNames
) -> None:
    """Every event of every message lands in DynamoDB and the queue ends empty."""
    events = [_event(time.time_ns() - i * _NS) for i in range(30)]
    _send(names, events)
    store = _store(resources)
    consumer = _consumer(names, store)
    _consume_all(consumer)
    for event in events:
        stored = store.get(event.event_id)
        assert stored is not None
        assert stored.event == event
    assert consumer.stats.events_written == 30
    assert consumer.stats.deleted == consumer.stats.received
    attrs = sqs_client().get_queue_attributes(
        QueueUrl=resources.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_poison_goes_to_dlq_with_reason_and_does_not_block(
    resources: Resources, names: ResourceNames
) -> None:
    """A malformed message is dead-lettered with its reason at once, and the good
    message behind it in the same FIFO group is still written."""
    sqs = sqs_client()
    sqs.send_message(
        QueueUrl=resources.queue_url,
        MessageBody="this is not base64 protobuf!",
        MessageAttributes=MESSAGE_ATTRIBUTES,
        MessageGroupId="it",
        MessageDeduplicationId="poison-1",
    )
    good = _event(time.time_ns())
    _send(names, [good])
    store = _store(resources)
    consumer = _consumer(names, store)
    _consume_all(consumer)
    assert store.get(good.event_id) is not None
    dead = sqs.receive_message(
        QueueUrl=resources.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", [])
    assert len(dead) == 1
    assert dead[0]["Body"] == "this is not base64 protobuf!"
    reason = dead[0]["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]
    assert "base64" in reason


def test_redelivered_events_are_not_duplicated(resources: Resources, names: ResourceNames) -> None:
    """Sending the same events twice (a redelivery) leaves one item per event."""
    base = time.time_ns()
    events = [_event(base + i) for i in range(5)]
    _send(names, events)
    _send(names, events)
    store = _store(resources)
    consumer = _consumer(names, store)
    _consume_all(consumer)
    page, cursor = store.list(base - _NS, base + _NS, page_size=100)
    assert [s.event.event_id for s in page] == [e.event_id for e in events]
    assert cursor is None


def test_list_pages_across_days_in_both_orders(resources: Resources) -> None:
    """ListEvents' store query returns every event once, in time order, across a day
    boundary, a page at a time, oldest or newest first."""
    store = _store(resources)
    midnight = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()) * _NS
    events = [_event(midnight + (i - 12) * 600 * _NS, query=f"q{i}") for i in range(25)]
    store.write([("b", events)], ingested_ns=time.time_ns())
    start, end = midnight - 3 * 3600 * _NS, midnight + 3 * 3600 * _NS
    for newest_first in (False, True):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = store.list(
                start, end, page_size=7, newest_first=newest_first, cursor=cursor
            )
            seen.extend(s.event.query for s in page)
            pages += 1
            if cursor is None:
                break
        expected = [e.query for e in events]
        assert seen == (expected[::-1] if newest_first else expected)
        assert pages == 4


def test_summary_counts_events_errors_and_skills(resources: Resources) -> None:
    """GetSummary's store query counts events and errors in the range and ranks skills."""
    store = _store(resources)
    now = time.time_ns()
    events = [_event(now - i * _NS, status=3 if i % 4 == 0 else 0) for i in range(12)]
    outside = _event(now - 7200 * _NS)
    store.write([("b", [*events, outside])], ingested_ns=now)
    summary = store.summary(now - 3600 * _NS, now + _NS)
    assert summary.event_count == 12
    assert summary.error_count == 3
    assert summary.top_skills == [("Kubernetes", 12)]
    assert abs(summary.mean_processing_ms - 2.0) < 1e-6
