"""Poison messages over the wire: the consumer against the local endpoint
(SQS and DynamoDB), each poison dead-lettered with its reason attribute on its
first receive while the good events around it are readable at once."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

from grpc_health.v1 import health_pb2

from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.decode import MAX_TIMESTAMP_SECONDS
from offpath.ingest.store import EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import (
    MESSAGE_ATTRIBUTES,
    REASON_ATTRIBUTE,
    SOURCE_ID_ATTRIBUTE,
    QueueNames,
    decode_message,
    encode_batch,
)
from offpath.v1 import analytics_pb2, query_pb2

# A good batch is readable within this long of the consumer starting (it takes
# well under a second; the 80 s a poisoned receive used to hold it is far out).
PROMPT_S = 10.0


def _event(year_10000: bool = False) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=new_id(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query="kubernetes",
        model="template-v1",
        token_count=7,
        producer_id="it",
    )
    event.occurred_at.GetCurrentTime()
    if year_10000:
        event.occurred_at.seconds = MAX_TIMESTAMP_SECONDS + 1
    event.processing_time.FromNanoseconds(2_000_000)
    return event


def _send_body(resources: Resources, body: str, dedup: str) -> str:
    """A message in the producers' group "it", as a producer would send it."""
    return sqs_client().send_message(
        QueueUrl=resources.queue_url,
        MessageBody=body,
        MessageAttributes=MESSAGE_ATTRIBUTES,
        MessageGroupId="it",
        MessageDeduplicationId=dedup,
    )["MessageId"]


def _send_events(resources: Resources, *events: analytics_pb2.AnalyticsEvent) -> str:
    batch = analytics_pb2.AnalyticsBatch(batch_id=new_id(), producer_id="it", events=events)
    return _send_body(resources, encode_batch(batch), batch.batch_id)


def _send_good(names: ResourceNames, event: analytics_pb2.AnalyticsEvent) -> None:
    """Through the emitter's SQS sink, as QueryService sends."""
    settings = EmitterSettings(queue_name=names.queues.queue, producer_id="it")
    assert SqsSink(settings).export([event], deadline=time.monotonic() + 10).sent == 1


def _consumer(resources: Resources, *, max_receives: int = 3) -> tuple[Consumer, EventStore]:
    store = EventStore(dynamodb_client(), resources.table, shards=4)
    queues = Queues(QueueNames(), queue_url=resources.queue_url, dlq_url=resources.dlq_url)
    consumer = Consumer(sqs_client(), store, queues, wait_seconds=0, max_receives=max_receives)
    assert consumer.resolve(threading.Event())
    return consumer, store


def _drain(consumer: Consumer) -> None:
    while consumer.poll_once():
        pass


def _dead(resources: Resources) -> dict[str, dict[str, Any]]:
    """The DLQ's messages by source message id."""
    messages: list[Any] = list(
        sqs_client()
        .receive_message(
            QueueUrl=resources.dlq_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=60,
        )
        .get("Messages", [])
    )
    return {m["MessageAttributes"][SOURCE_ID_ATTRIBUTE]["StringValue"]: m for m in messages}


def _reason(message: dict[str, Any]) -> str:
    return str(message["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"])


def _queue_empty(resources: Resources) -> bool:
    attributes = sqs_client().get_queue_attributes(
        QueueUrl=resources.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        attributes["ApproximateNumberOfMessages"]
        == attributes["ApproximateNumberOfMessagesNotVisible"]
        == "0"
    )


def test_year_10000_is_dead_lettered_while_the_good_batch_lands(
    resources: Resources, names: ResourceNames
) -> None:
    """The issue's case: a message with one event dated in year 10000, and a good
    batch beside it in the same group. The good event is readable promptly, the
    poison is in the DLQ with its reason, and nothing is left on the queue."""
    poison = _send_events(resources, _event(year_10000=True))
    good = _event()
    _send_good(names, good)
    consumer, store = _consumer(resources)
    started = time.monotonic()
    _drain(consumer)
    assert store.get(good.event_id) is not None
    assert time.monotonic() - started < PROMPT_S
    dead = _dead(resources)
    assert set(dead) == {poison}
    assert "after 9999-12-31T23:59:59Z" in _reason(dead[poison])
    assert consumer.stats.store_backoffs == 0
    assert _queue_empty(resources)


def test_year_10000_among_good_events_of_its_batch(resources: Resources) -> None:
    """The good events of the same batch land; the bad one alone is dead-lettered."""
    good = [_event(), _event()]
    bad = _event(year_10000=True)
    source = _send_events(resources, good[0], bad, good[1])
    consumer, store = _consumer(resources)
    _drain(consumer)
    assert all(store.get(e.event_id) is not None for e in good)
    assert store.get(bad.event_id) is None
    letter = _dead(resources)[f"{source}-invalid"]
    assert [e.event_id for e in decode_message(letter["Body"], MESSAGE_ATTRIBUTES).events] == [
        bad.event_id
    ]
    assert "after 9999" in _reason(letter)
    assert _queue_empty(resources)


def test_other_message_types_and_empty_batches(resources: Resources) -> None:
    """Bodies that are some other protobuf message, or a batch of no events, are
    dead-lettered with a reason instead of being deleted silently."""
    bodies = {
        "query-request": query_pb2.QueryRequest(query="hello", top_k=3).SerializeToString(),
        "health": health_pb2.HealthCheckResponse(status=1).SerializeToString(),
        "empty": analytics_pb2.AnalyticsBatch(batch_id=new_id()).SerializeToString(),
    }
    sent = {
        _send_body(resources, base64.b64encode(data).decode(), name): name
        for name, data in bodies.items()
    }
    good = _event()
    _send_events(resources, good)
    consumer, store = _consumer(resources)
    _drain(consumer)
    dead = _dead(resources)
    assert set(dead) == set(sent)
    reasons = {sent[source]: _reason(message) for source, message in dead.items()}
    assert "not an AnalyticsBatch" in reasons["query-request"]
    assert "not an AnalyticsBatch" in reasons["health"]
    assert "no events" in reasons["empty"]
    assert store.get(good.event_id) is not None


def test_consumer_dead_letters_past_the_receive_limit(resources: Resources) -> None:
    """The consumer's own redrive backstop over the wire: a message received more
    often than its limit (here 1, below the queue's maxReceiveCount, so the
    endpoint's own redrive does not act first) is dead-lettered with how often it
    came, not written."""
    event = _event()
    source = _send_events(resources, event)
    first = sqs_client().receive_message(QueueUrl=resources.queue_url, VisibilityTimeout=0)
    assert len(first.get("Messages", [])) == 1
    consumer, store = _consumer(resources, max_receives=1)
    _drain(consumer)
    dead = _dead(resources)
    assert "received 2 times" in _reason(dead[source])
    assert store.get(event.event_id) is None
    assert _queue_empty(resources)
