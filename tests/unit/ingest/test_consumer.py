"""Unit tests for offpath.ingest.consumer.Consumer over the shared FakeSqs and a real
EventStore on FakeDynamoDb: write-then-delete, dead letters, queue look-up and the run loop."""

from __future__ import annotations

import base64
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from offpath.ingest import rollups
from offpath.ingest.consumer import Consumer, EventWriter, Queues
from offpath.ingest.store import (
    TABLE_KEY,
    TIME_PARTITION,
    TIME_SORT,
    EventStore,
    create_table_request,
    iso_ns,
    rollup_table_for,
)
from offpath.kit.sqs import (
    DEAD_LETTER_GROUP,
    MESSAGE_ATTRIBUTES,
    REASON_ATTRIBUTE,
    SOURCE_ID_ATTRIBUTE,
    QueueNames,
    decode_message,
    encode_batch,
    fifo_fields,
)
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeMessage, FakeSqs
from offpath.v1 import analytics_pb2

QUEUE = "events.fifo"
DLQ = "events-dlq.fifo"
TABLE = "events"
NOW_NS = 1_790_000_100_000_000_000
VISIBILITY_S = 30


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded: the backoff the loop
    asked for, without spending it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


class Harness:
    """FakeSqs with a queue and its DLQ, a real EventStore on FakeDynamoDb, and a consumer
    whose jitter always picks the backoff ceiling."""

    def __init__(
        self,
        *,
        queue: str = QUEUE,
        dlq: str = DLQ,
        queues: Queues | None = None,
        ddb: FakeDynamoDb | None = None,
        store: Callable[[EventStore], EventWriter] | None = None,
    ) -> None:
        fifo = {"FifoQueue": "true"} if queue.endswith(".fifo") else {}
        self.sqs = FakeSqs()
        self.queue_url = self.sqs.add_queue(queue, VisibilityTimeout=str(VISIBILITY_S), **fifo)
        self.dlq_url = self.sqs.add_queue(dlq, **fifo)
        self.ddb = ddb or FakeDynamoDb()
        self.ddb.create_table(**create_table_request(TABLE))
        self.ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
        self.store = EventStore(self.ddb, TABLE, shards=4, sleep=lambda _: None)
        self.consumer = Consumer(
            self.sqs,
            self.store if store is None else store(self.store),
            queues or Queues(QueueNames(queue=queue, dlq=dlq)),
            wait_seconds=0,
            clock_ns=lambda: NOW_NS,
            rng=lambda: 1.0,
        )
        self._dedup = itertools.count()

    def resolve(self) -> None:
        assert self.consumer.resolve(threading.Event())

    def send(
        self,
        *events: analytics_pb2.AnalyticsEvent,
        body: str | None = None,
        attributes: Mapping[str, Any] | None = MESSAGE_ATTRIBUTES,
        batch_id: str | None = None,
    ) -> str:
        """Put a message on the queue as a producer would; returns its MessageId."""
        n = next(self._dedup)
        batch = analytics_pb2.AnalyticsBatch(
            batch_id=batch_id or f"0190a6f2-0000-7000-8000-{n:012d}",
            producer_id="producer-1",
            events=events,
        )
        response = self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=encode_batch(batch) if body is None else body,
            MessageAttributes=dict(attributes or {}),
            **fifo_fields(self.queue_url, group_id="producer-1", dedup_id=f"dedup-{n}"),
        )
        return response["MessageId"]

    @property
    def left(self) -> list[str]:
        """Bodies still on the source queue (not deleted), in flight or not."""
        return self.sqs.bodies(self.queue_url)

    @property
    def dead(self) -> list[FakeMessage]:
        return list(self.sqs.queue(self.dlq_url).messages)

    @property
    def stored_ids(self) -> set[str]:
        return {item[TABLE_KEY]["S"] for item in self.ddb.items(TABLE)}

    def deleted_entries(self) -> list[int]:
        """How many entries each DeleteMessageBatch call carried."""
        return [len(call["Entries"]) for call in self.sqs.journal.of("delete_message_batch")]


@pytest.fixture
def harness() -> Harness:
    h = Harness()
    h.resolve()
    return h


def _event(i: int, event_id: str | None = None) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id if event_id is not None else f"0190a6f2-7a55-7cc1-9d2b-{i:012x}",
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=f"query {i}",
        producer_id="producer-1",
    )
    event.occurred_at.FromNanoseconds(1_790_000_000_000_000_000 + i * 1_000_000)
    return event


def _ids(events: Sequence[analytics_pb2.AnalyticsEvent]) -> set[str]:
    return {event.event_id for event in events}


def _reason(message: FakeMessage) -> str:
    value = message.attributes[REASON_ATTRIBUTE]["StringValue"]
    assert isinstance(value, str)
    return value


def _observe(log: list[str], name: str) -> Callable[[Mapping[str, Any]], None]:
    """An injected outcome that notes the call in a shared list and lets the fake answer."""

    def note(_request: Mapping[str, Any]) -> None:
        log.append(name)

    return note


class TestGoodMessages:
    def test_written_then_deleted(self, harness: Harness) -> None:
        """A good message's events are all written, and only then is the message deleted."""
        order: list[str] = []
        harness.sqs.journal.inject("receive_message", _observe(order, "receive"))
        harness.ddb.journal.inject("transact_write_items", _observe(order, "write"))
        harness.sqs.journal.inject("delete_message_batch", _observe(order, "delete"))
        events = [_event(i) for i in range(3)]
        harness.send(*events)
        assert harness.consumer.poll_once() == 1
        assert order == ["receive", "write", "delete"]
        assert harness.stored_ids == _ids(events)
        assert harness.left == []
        assert harness.dead == []
        stats = harness.consumer.stats
        assert (stats.received, stats.events_written, stats.deleted) == (1, 3, 1)

    def test_items_carry_the_batch_and_ingest_time(self, harness: Harness) -> None:
        """Stored items hold the event as sent, its batch's id and the consumer's clock."""
        event = _event(7)
        batch_id = "0190a6f2-0000-7000-8000-00000000abcd"
        harness.send(event, batch_id=batch_id)
        harness.consumer.poll_once()
        (item,) = harness.ddb.items(TABLE)
        assert analytics_pb2.AnalyticsEvent.FromString(item["payload"]["B"]) == event
        assert item["batch_id"] == {"S": batch_id}
        assert item["ingested_at"] == {"S": iso_ns(NOW_NS)}

    def test_receive_asks_for_attributes_and_a_full_batch(self, harness: Harness) -> None:
        """receive_message asks the looked-up queue for all message attributes (the schema
        lives there), up to 10 messages, waiting as configured; an empty receive does
        nothing else."""
        assert harness.consumer.poll_once() == 0
        (call,) = harness.sqs.journal.of("receive_message")
        assert call["QueueUrl"] == harness.queue_url
        assert call["MaxNumberOfMessages"] == 10
        assert call["WaitTimeSeconds"] == 0
        assert call["MessageAttributeNames"] == ["All"]
        assert harness.sqs.journal.operations[-1] == "receive_message"
        assert harness.ddb.journal.of("put_item") == []

    def test_one_write_for_many_messages(self, harness: Harness) -> None:
        """Messages of one receive are written in one store call (a put per event,
        a rollup transaction per message) and deleted in one call."""
        for n in range(4):
            harness.send(_event(n))
        assert harness.consumer.poll_once() == 4
        assert len(harness.ddb.journal.of("put_item")) == 4
        assert len(harness.ddb.journal.of("transact_write_items")) == 4
        assert harness.deleted_entries() == [4]
        assert harness.left == []
        assert len(harness.stored_ids) == 4

    def test_redelivery_writes_the_same_keys(self, harness: Harness) -> None:
        """A message redelivered after a failed delete puts items with identical keys, so
        the table holds each event once."""
        events = [_event(i) for i in range(5)]
        harness.send(*events)
        harness.sqs.journal.inject(
            "delete_message_batch",
            *[client_error("InternalError", "no", "DeleteMessageBatch") for _ in range(3)],
        )
        assert harness.consumer.poll_once() == 1
        assert len(harness.left) == 1
        harness.sqs.advance(VISIBILITY_S + 1)
        assert harness.consumer.poll_once() == 1
        puts = harness.ddb.journal.of("put_item")

        def keys(calls: list[dict[str, Any]]) -> list[tuple[str, ...]]:
            return sorted(
                tuple(c["Item"][k]["S"] for k in (TABLE_KEY, TIME_PARTITION, TIME_SORT))
                for c in calls
            )

        assert keys(puts[:5]) == keys(puts[5:])
        assert harness.stored_ids == _ids(events)
        assert harness.left == []
        assert harness.consumer.stats.deleted == 1


class TestWriteFailure:
    @pytest.mark.parametrize(
        "fail",
        ["put", "rollups"],
    )
    def test_message_is_not_deleted(self, harness: Harness, fail: str) -> None:
        """When DynamoDB fails (writing an event, or its rollups), the message stays
        on the queue for redelivery and nothing is dead-lettered."""
        operation = "put_item" if fail == "put" else "transact_write_items"
        harness.ddb.journal.inject(
            operation, client_error("ProvisionedThroughputExceededException", "no", "Write")
        )
        harness.send(_event(1))
        harness.consumer.poll_once()
        assert harness.sqs.journal.of("delete_message_batch") == []
        assert len(harness.left) == 1
        assert harness.dead == []
        assert harness.consumer.stats.write_failures == 1
        assert harness.consumer.stats.events_written == 0

    def test_poison_is_still_deleted(self, harness: Harness) -> None:
        """A write failure does not hold back a poison message already dead-lettered."""
        harness.ddb.journal.inject("put_item", RuntimeError("connection reset"))
        harness.send(body="%%%")
        harness.send(_event(2))
        harness.consumer.poll_once()
        assert len(harness.dead) == 1
        assert harness.deleted_entries() == [1]
        assert len(harness.left) == 1
        assert harness.dead[0].body == "%%%"
        assert harness.left[0] != "%%%"

    def test_invalid_events_are_not_dead_lettered_when_the_write_fails(
        self, harness: Harness
    ) -> None:
        """The whole message comes back, so its invalid events are not dead-lettered yet."""
        harness.ddb.journal.inject("put_item", RuntimeError("connection reset"))
        harness.send(_event(1), _event(2, event_id="nope"))
        harness.consumer.poll_once()
        assert harness.dead == []
        assert harness.sqs.journal.of("delete_message_batch") == []
        assert len(harness.left) == 1


class TestPoisonMessages:
    def test_dead_lettered_with_reason_and_deleted(self, harness: Harness) -> None:
        """A message that is not base64 goes to the DLQ as is, with the reason and source
        attributes, and is deleted; the good message beside it is written and deleted too."""
        good = [_event(1), _event(2)]
        poison_id = harness.send(body="this is not base64!")
        harness.send(*good)
        assert harness.consumer.poll_once() == 2
        (dead,) = harness.dead
        assert dead.body == "this is not base64!"
        assert "not base64" in _reason(dead)
        assert dead.attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == poison_id
        for name, value in MESSAGE_ATTRIBUTES.items():
            assert dead.attributes[name] == value  # original attributes are kept
        assert dead.group_id == DEAD_LETTER_GROUP
        assert dead.dedup_id == poison_id
        assert harness.stored_ids == _ids(good)
        assert harness.left == []
        assert harness.consumer.stats.dead_lettered == 1

    @pytest.mark.parametrize(
        ("body", "attributes", "reason"),
        [
            (None, None, "offpath-schema"),
            (
                None,
                {
                    **MESSAGE_ATTRIBUTES,
                    "offpath-schema-version": {"DataType": "String", "StringValue": "9"},
                },
                "offpath-schema-version",
            ),
            (base64.b64encode(b"\xff\xff").decode(), MESSAGE_ATTRIBUTES, "not an AnalyticsBatch"),
            (encode_batch(analytics_pb2.AnalyticsBatch()), MESSAGE_ATTRIBUTES, "batch_id"),
        ],
        ids=["no-schema", "other-version", "not-a-batch", "no-batch-id"],
    )
    def test_each_poison_reason_reaches_the_dlq(
        self,
        harness: Harness,
        body: str | None,
        attributes: Mapping[str, Any] | None,
        reason: str,
    ) -> None:
        """Every kind of undecodable message is dead-lettered with its own reason, deleted,
        and nothing of it is written."""
        harness.send(_event(1), body=body, attributes=attributes)
        harness.consumer.poll_once()
        (dead,) = harness.dead
        assert reason in _reason(dead)
        assert harness.left == []
        assert harness.ddb.journal.of("put_item") == []

    def test_standard_dlq_gets_no_fifo_fields(self) -> None:
        """A standard DLQ gets neither a group id nor a dedup id (it would reject them)."""
        harness = Harness(queue="events", dlq="events-dlq")
        harness.resolve()
        harness.send(body="%%%")
        harness.consumer.poll_once()
        (sent,) = harness.sqs.journal.of("send_message")[1:]
        assert "MessageGroupId" not in sent
        assert "MessageDeduplicationId" not in sent
        (dead,) = harness.dead
        assert "not base64" in _reason(dead)
        assert harness.left == []

    def test_not_deleted_when_the_dlq_send_fails(self, harness: Harness) -> None:
        """If the DLQ cannot take the poison message, it stays on the source queue."""
        harness.send(body="%%%")
        harness.send(_event(2))
        harness.sqs.journal.inject(
            "send_message", client_error("InternalError", "no", "SendMessage")
        )
        harness.consumer.poll_once()
        assert harness.left == ["%%%"]
        assert harness.deleted_entries() == [1]
        assert harness.dead == []
        assert harness.consumer.stats.dead_lettered == 0


class TestInvalidEvents:
    def test_split_off_to_the_dlq(self, harness: Harness) -> None:
        """Valid events are written; the invalid one goes to the DLQ as its own batch with a
        reason; the source message is deleted."""
        valid = [_event(1), _event(3)]
        bad = _event(2, event_id="not-a-uuid")
        source_id = harness.send(valid[0], bad, valid[1])
        harness.consumer.poll_once()
        assert harness.stored_ids == _ids(valid)
        (dead,) = harness.dead
        batch = decode_message(dead.body, dead.attributes)
        assert list(batch.events) == [bad]
        assert batch.producer_id == "producer-1"
        assert batch.batch_id
        reason = _reason(dead)
        assert "not-a-uuid" in reason
        assert "not a UUID" in reason
        assert dead.dedup_id == f"{source_id}-invalid"
        assert dead.attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == f"{source_id}-invalid"
        assert harness.left == []
        assert harness.consumer.stats.invalid_events == 1
        assert harness.consumer.stats.events_written == 2

    def test_event_without_time_is_invalid(self, harness: Harness) -> None:
        """An event with no occurred_at cannot be placed in the time index: dead-lettered."""
        bad = _event(2)
        bad.ClearField("occurred_at")
        harness.send(_event(1), bad)
        harness.consumer.poll_once()
        (dead,) = harness.dead
        assert "occurred_at" in _reason(dead)
        assert harness.stored_ids == {_event(1).event_id}

    def test_only_invalid_events_make_no_write(self, harness: Harness) -> None:
        """A batch with nothing valid is dead-lettered and deleted without a DynamoDB call."""
        harness.send(_event(1, event_id="x"), _event(2, event_id="y"))
        harness.consumer.poll_once()
        assert harness.ddb.journal.of("put_item") == []
        (dead,) = harness.dead
        assert len(decode_message(dead.body, dead.attributes).events) == 2
        assert harness.left == []

    def test_kept_when_the_dlq_send_fails(self, harness: Harness) -> None:
        """If the invalid events cannot be dead-lettered, the message is not deleted (the
        valid events are rewritten on redelivery)."""
        harness.send(_event(1), _event(2, event_id="x"))
        harness.sqs.journal.inject(
            "send_message", client_error("InternalError", "no", "SendMessage")
        )
        harness.consumer.poll_once()
        assert harness.stored_ids == {_event(1).event_id}
        assert len(harness.left) == 1
        assert harness.sqs.journal.of("delete_message_batch") == []
        assert harness.dead == []


class TestResolve:
    def test_poll_needs_resolve_first(self) -> None:
        """poll_once before the queues are known raises instead of guessing a URL."""
        harness = Harness()
        with pytest.raises(RuntimeError, match="resolve"):
            harness.consumer.poll_once()
        assert harness.sqs.journal.of("receive_message") == []

    @pytest.mark.parametrize(
        "error",
        [
            client_error("AWS.SimpleQueueService.NonExistentQueue", "no queue", "GetQueueUrl"),
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ],
        ids=["no-queue-yet", "no-endpoint-yet"],
    )
    def test_retries_a_failing_look_up_with_backoff(self, error: Exception) -> None:
        """Look-ups that fail are retried after full-jitter waits of up to 0.5 s, then 1 s,
        until both URLs are found; polling then uses them."""
        harness = Harness()
        harness.sqs.journal.inject("get_queue_url", error, error)
        stop = RecordingStop()
        assert harness.consumer.resolve(stop)
        assert stop.waits == [0.5, 1.0]
        names = [call["QueueName"] for call in harness.sqs.journal.of("get_queue_url")]
        assert names == [QUEUE, QUEUE, QUEUE, DLQ]
        harness.send(body="%%%")
        harness.consumer.poll_once()
        assert harness.sqs.journal.of("receive_message")[0]["QueueUrl"] == harness.queue_url
        assert len(harness.dead) == 1

    def test_backoff_is_capped_at_30_seconds(self) -> None:
        """A look-up that keeps failing waits at most 30 s between tries."""
        harness = Harness()
        error = client_error("AWS.SimpleQueueService.NonExistentQueue", "no", "GetQueueUrl")
        harness.sqs.journal.inject("get_queue_url", *[error] * 9)
        stop = RecordingStop()
        assert harness.consumer.resolve(stop)
        assert stop.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]

    def test_configured_urls_skip_the_look_up(self) -> None:
        """With both URLs configured, resolve makes no GetQueueUrl call and polls them."""
        probe = Harness()
        harness = Harness(
            queues=Queues(
                QueueNames(queue="ignored.fifo", dlq="ignored-dlq.fifo"),
                queue_url=probe.queue_url,
                dlq_url=probe.dlq_url,
            )
        )
        assert harness.consumer.resolve(RecordingStop())
        assert harness.sqs.journal.of("get_queue_url") == []
        harness.send(body="%%%")
        harness.consumer.poll_once()
        assert harness.sqs.journal.of("receive_message")[0]["QueueUrl"] == harness.queue_url
        assert len(harness.dead) == 1

    def test_stop_during_resolve_returns_false(self) -> None:
        """A stop while the look-up keeps failing ends resolve with False."""
        harness = Harness()
        stop = RecordingStop()

        def fail_and_stop(_request: Mapping[str, Any]) -> None:
            stop.set()
            raise client_error("AWS.SimpleQueueService.NonExistentQueue", "no", "GetQueueUrl")

        harness.sqs.journal.inject("get_queue_url", fail_and_stop)
        assert not harness.consumer.resolve(stop)
        assert len(harness.sqs.journal.of("get_queue_url")) == 1
        with pytest.raises(RuntimeError):
            harness.consumer.poll_once()

    def test_run_polls_nothing_when_stopped_during_resolve(self) -> None:
        """run() returns without a single receive when stopped before the queues are found."""
        harness = Harness()
        stop = RecordingStop()

        def fail_and_stop(_request: Mapping[str, Any]) -> None:
            stop.set()
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        harness.sqs.journal.inject("get_queue_url", fail_and_stop)
        harness.send(_event(1))
        harness.consumer.run(stop)
        assert harness.sqs.journal.of("receive_message") == []
        assert harness.stored_ids == set()


class TestRun:
    def test_backs_off_after_poll_errors_and_stops(self, harness: Harness) -> None:
        """Failing receives are counted and backed off (up to 1 s, then 2 s, reset after a
        success); the loop keeps polling, processes what comes, and ends on stop."""
        stop = RecordingStop()

        def stop_after(_request: Mapping[str, Any]) -> None:
            stop.set()

        harness.sqs.journal.inject(
            "receive_message",
            client_error("InternalError", "no", "ReceiveMessage"),
            RuntimeError("connection reset"),
            _observe([], "receive"),
            client_error("InternalError", "no", "ReceiveMessage"),
            stop_after,
        )
        harness.send(_event(1))
        harness.consumer.run(stop)
        assert stop.waits == [1.0, 2.0, 1.0]
        assert len(harness.sqs.journal.of("receive_message")) == 5
        assert harness.consumer.stats.poll_errors == 3
        assert harness.stored_ids == {_event(1).event_id}
        assert harness.left == []

    def test_runs_on_a_thread_until_stopped(self) -> None:
        """On its own thread, run() looks the queues up, ingests what arrives, and returns
        soon after stop is set."""
        harness = Harness()
        stop = threading.Event()
        harness.send(_event(1))
        deleted = threading.Event()
        harness.sqs.journal.inject("delete_message_batch", lambda _request: deleted.set())
        thread = threading.Thread(target=harness.consumer.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert deleted.wait(timeout=5.0)
        finally:
            stop.set()
            thread.join(timeout=5.0)
        assert not thread.is_alive()
        assert harness.stored_ids == {_event(1).event_id}
        assert harness.left == []
