"""Rollups against the local endpoint: exact under redelivery, re-sends and a
crash between the event writes and the rollup transaction; summaries read
back from them."""

from __future__ import annotations

import threading
import time
from typing import Any

from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest import rollups
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.store import EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.v1 import analytics_pb2

_NS = 1_000_000_000


def _event(occurred_ns: int, i: int) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=new_id(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=["What about  Kubernetes?", "what about kubernetes?", "Python"][i % 3],
        model="template-v1" if i % 2 else "other-model",
        token_count=7 + i,
        status_code=3 if i % 5 == 0 else 0,
        producer_id="it",
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    event.processing_time.FromNanoseconds((i + 1) * 1_000_000)
    event.matched_skills.add(name="Kubernetes", score=0.5)
    if i % 2:
        event.matched_skills.add(name="Python", score=0.4)
    return event


def _events(n: int) -> list[analytics_pb2.AnalyticsEvent]:
    now = time.time_ns()
    return [_event(now - i * _NS, i) for i in range(n)]


def _store(resources: Resources) -> EventStore:
    return EventStore(dynamodb_client(), resources.table, rollup_table=resources.rollup_table)


def _send(names: ResourceNames, events: list[analytics_pb2.AnalyticsEvent]) -> None:
    settings = EmitterSettings(queue_name=names.queues.queue, producer_id="it")
    result = SqsSink(settings).export(events, deadline=time.monotonic() + 10)
    assert result.sent == len(events)


def _receive(resources: Resources) -> list[Any]:
    """Every message on the queue, received (not deleted)."""
    messages: list[Any] = []
    sqs = sqs_client()
    while True:
        got = sqs.receive_message(
            QueueUrl=resources.queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=0,
        ).get("Messages", [])
        if not got:
            return messages
        messages.extend(got)
        for message in got:
            sqs.delete_message(QueueUrl=resources.queue_url, ReceiptHandle=message["ReceiptHandle"])


def _consumer(names: ResourceNames, store: EventStore) -> Consumer:
    consumer = Consumer(sqs_client(), store, Queues(names.queues), wait_seconds=0)
    assert consumer.resolve(threading.Event())
    return consumer


def _consume_all(consumer: Consumer) -> None:
    while consumer.poll_once():
        pass


def _rollups(resources: Resources) -> dict[tuple[str, str], dict[str, Any]]:
    """Every rollup item (markers left out), by key, without TTL."""
    ddb = dynamodb_client()
    items: dict[tuple[str, str], dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": resources.rollup_table}
    while True:
        page = ddb.scan(**kwargs)
        for item in page["Items"]:
            pk = item[rollups.ROLLUP_PARTITION]["S"]
            if pk.startswith("r#"):
                items[(pk, item[rollups.ROLLUP_SORT]["S"])] = dict(item)
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _assert_counted_once(store: EventStore, events: list[analytics_pb2.AnalyticsEvent]) -> None:
    """The summary equals the events' own totals, each counted once."""
    now = time.time_ns()
    summary = store.summary(now - 2 * 3600 * _NS, now + _NS)
    assert summary.event_count == len(events)
    assert summary.error_count == sum(1 for e in events if e.status_code)
    assert dict(summary.top_skills)["Kubernetes"] == len(events)
    assert dict(summary.top_queries)["what about kubernetes?"] == sum(
        1 for e in events if "ubernetes" in e.query
    )
    tokens = {m: t for m, _, t in summary.models}
    assert sum(tokens.values()) == sum(e.token_count for e in events)


def test_same_message_delivered_twice_leaves_rollups_unchanged(
    resources: Resources, names: ResourceNames
) -> None:
    """Processing one SQS message a second time (a redelivery) changes no rollup item."""
    events = _events(25)
    _send(names, events)
    messages = _receive(resources)
    assert messages
    store = _store(resources)
    consumer = _consumer(names, store)
    consumer.process(messages)
    once = _rollups(resources)
    consumer.process(messages)
    assert _rollups(resources) == once
    assert store.stats.replays >= 1
    _assert_counted_once(store, events)


def test_same_events_resent_in_a_new_batch_leave_rollups_unchanged(
    resources: Resources, names: ResourceNames
) -> None:
    """The same events sent again under new batch ids, split differently, add nothing."""
    events = _events(30)
    _send(names, events)
    store = _store(resources)
    consumer = _consumer(names, store)
    _consume_all(consumer)
    once = _rollups(resources)
    _send(names, events[10:])
    _send(names, events[:10])
    _consume_all(consumer)
    assert _rollups(resources) == once
    assert store.stats.duplicates == 30
    _assert_counted_once(store, events)


def test_crash_between_event_writes_and_rollups_counts_once(resources: Resources) -> None:
    """A message whose events were written but whose rollups were not (a crash
    between the two steps) is counted exactly once when it is redelivered."""
    events = _events(20)
    store = _store(resources)
    batch = [("batch-crash", events)]
    store.claim(batch, ingested_ns=time.time_ns())  # step (a) only, then the crash
    assert _rollups(resources) == {}
    assert store.write(batch, ingested_ns=time.time_ns()) == 20  # the redelivery
    _assert_counted_once(store, events)
    store.write(batch, ingested_ns=time.time_ns())  # and one more
    _assert_counted_once(store, events)


def test_rollup_items_stay_small(resources: Resources) -> None:
    """A bucket of many distinct queries keeps at most QUERY_KEYS_CAP texts and
    counts the rest as other, so its item stays far below DynamoDB's 400 KB."""
    now = time.time_ns()
    store = _store(resources)
    events = [_event(now, i) for i in range(200)]
    for i, event in enumerate(events):
        event.query = f"question number {i} " + "x" * 200
    for start in range(0, 200, 50):
        store.write([(f"b-{start}", events[start : start + 50])], ingested_ns=now)
    summary = store.summary(now - 3600 * _NS, now + _NS)
    assert summary.event_count == 200
    query_items = [v for k, v in _rollups(resources).items() if rollups.is_query_item(k[1])]
    assert len(query_items) == rollups.QUERY_SHARDS
    texts = 0
    for item in query_items:
        held = [name for name in item if name.startswith("q:")]
        assert len(held) <= rollups.QUERY_KEYS_CAP
        texts += len(held)
    assert texts + summary.other_queries == 200
    assert summary.other_queries > 0
