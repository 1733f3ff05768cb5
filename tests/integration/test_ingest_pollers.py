"""AnalyticsIngest's concurrent pollers against the local endpoint: several pollers on one
queue write every event once and delete every message once."""

from __future__ import annotations

import threading
import time

from structlog.testing import capture_logs

from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.store import EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.v1 import analytics_pb2

_NS = 1_000_000_000
_PRODUCERS = 6
_EVENTS_PER_PRODUCER = 50
_EVENTS_PER_MESSAGE = 10


def _event(producer: str) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=new_id(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query="kubernetes",
        producer_id=producer,
    )
    event.occurred_at.FromNanoseconds(time.time_ns())
    return event


def test_two_pollers_ingest_every_event_exactly_once(
    resources: Resources, names: ResourceNames
) -> None:
    """300 events in 30 messages from 6 producers (6 FIFO groups), consumed by 2 pollers
    over the wire: every event is stored, each message received and deleted once, both
    pollers took part, and the queue ends empty."""
    sent: list[analytics_pb2.AnalyticsEvent] = []
    for p in range(_PRODUCERS):
        producer = f"it-{p}"
        events = [_event(producer) for _ in range(_EVENTS_PER_PRODUCER)]
        settings = EmitterSettings(
            queue_name=names.queues.queue,
            producer_id=producer,
            events_per_message=_EVENTS_PER_MESSAGE,
        )
        assert SqsSink(settings).export(events, deadline=time.monotonic() + 30).sent == len(events)
        sent.extend(events)
    messages = _PRODUCERS * _EVENTS_PER_PRODUCER // _EVENTS_PER_MESSAGE

    store = EventStore(dynamodb_client(), resources.table, shards=4)
    consumer = Consumer(sqs_client(), store, Queues(names.queues), wait_seconds=1, pollers=2)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    with capture_logs() as logs:
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while consumer.stats.deleted < messages and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()

    stats = consumer.stats
    assert (stats.received, stats.deleted, stats.events_written) == (messages, messages, 300)
    assert (stats.undeleted, stats.write_failures, stats.handed_back) == (0, 0, 0)
    assert all(store.get(event.event_id) is not None for event in sent)
    assert consumer.lag.count == 300
    # Both pollers wrote.
    assert {r["poller"] for r in logs if r["event"] == "events_ingested"} == {0, 1}
    attrs = sqs_client().get_queue_attributes(
        QueueUrl=resources.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
