"""Unit tests for offpath.ingest.consumer.Consumer over a stub SQS client and a real
EventStore on a stub DynamoDB client."""

from __future__ import annotations

import base64
import copy
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from botocore.exceptions import ClientError

from offpath.ingest import consumer as consumer_module
from offpath.ingest.consumer import Consumer
from offpath.ingest.store import EventStore
from offpath.kit.wire import (
    MESSAGE_ATTRIBUTES,
    REASON_ATTRIBUTE,
    decode_message,
    encode_batch,
)
from offpath.v1 import analytics_pb2

QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/events.fifo"
DLQ_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/events-dlq.fifo"
TABLE = "events"
NOW_NS = 1_790_000_100_000_000_000
SOURCE_ID_ATTRIBUTE = "offpath-source-message-id"


class StubSqs:
    """The SQS calls the consumer makes: receive replays scripted message lists, send and
    delete record their arguments (and can be told to fail). Every call is also appended to
    the shared ``journal`` so tests can check order against DynamoDB writes."""

    def __init__(self, journal: list[str], receives: Sequence[list[dict[str, Any]]] = ()) -> None:
        self.journal = journal
        self.receives = list(receives)
        self.receive_calls: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.send_error: BaseException | None = None
        self.receive_error: BaseException | None = None

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.journal.append("receive_message")
        self.receive_calls.append(kwargs)
        if self.receive_error is not None:
            error, self.receive_error = self.receive_error, None
            raise error
        return {"Messages": self.receives.pop(0)} if self.receives else {}

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.journal.append("send_message")
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(copy.deepcopy(kwargs))
        return {"MessageId": f"dlq-{len(self.sent)}"}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.journal.append("delete_message_batch")
        self.deleted.append(copy.deepcopy(kwargs))
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}

    @property
    def deleted_handles(self) -> list[str]:
        return [e["ReceiptHandle"] for call in self.deleted for e in call["Entries"]]


class StubDynamoDb:
    """batch_write_item into an in-memory table keyed by event_id (or raising ``error``)."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.table: dict[str, dict[str, Any]] = {}
        self.writes: list[list[dict[str, Any]]] = []
        self.error: BaseException | None = None

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        self.journal.append("batch_write_item")
        if self.error is not None:
            raise self.error
        ((table, requests),) = kwargs["RequestItems"].items()
        assert table == TABLE
        items = [request["PutRequest"]["Item"] for request in requests]
        self.writes.append(items)
        for item in items:
            self.table[item["event_id"]["S"]] = item
        return {"UnprocessedItems": {}}


class Harness:
    def __init__(self, *, dlq_url: str = DLQ_URL) -> None:
        self.journal: list[str] = []
        self.sqs = StubSqs(self.journal)
        self.ddb = StubDynamoDb(self.journal)
        sqs: Any = self.sqs
        ddb: Any = self.ddb
        self.store = EventStore(ddb, TABLE, shards=4, sleep=lambda _: None)
        self.consumer = Consumer(
            sqs,
            self.store,
            queue_url=QUEUE_URL,
            dlq_url=dlq_url,
            wait_seconds=0,
            clock_ns=lambda: NOW_NS,
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()


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


def _message(
    n: int, *events: analytics_pb2.AnalyticsEvent, body: str | None = None
) -> dict[str, Any]:
    batch = analytics_pb2.AnalyticsBatch(
        batch_id=f"0190a6f2-0000-7000-8000-{n:012d}", producer_id="producer-1", events=events
    )
    return {
        "MessageId": f"msg-{n}",
        "ReceiptHandle": f"rh-{n}",
        "Body": encode_batch(batch) if body is None else body,
        "MessageAttributes": copy.deepcopy(MESSAGE_ATTRIBUTES),
    }


def _ids(events: Sequence[analytics_pb2.AnalyticsEvent]) -> set[str]:
    return {event.event_id for event in events}


class TestGoodMessages:
    def test_written_then_deleted(self, harness: Harness) -> None:
        """A good message's events are all written, and only then is the message deleted."""
        events = [_event(i) for i in range(3)]
        harness.sqs.receives.append([_message(1, *events)])
        assert harness.consumer.poll_once() == 1
        assert set(harness.ddb.table) == _ids(events)
        assert harness.journal == ["receive_message", "batch_write_item", "delete_message_batch"]
        assert harness.sqs.deleted == [
            {"QueueUrl": QUEUE_URL, "Entries": [{"Id": "0", "ReceiptHandle": "rh-1"}]}
        ]
        assert harness.sqs.sent == []
        stats = harness.consumer.stats
        assert (stats.received, stats.events_written, stats.deleted) == (1, 3, 1)

    def test_items_carry_the_batch_and_ingest_time(self, harness: Harness) -> None:
        """Stored items are the store's items for the event, with the batch id and clock."""
        event = _event(7)
        message = _message(1, event)
        harness.consumer.process([message])
        item = harness.ddb.table[event.event_id]
        batch_id = decode_message(message["Body"], message["MessageAttributes"]).batch_id
        expected = harness.store.item(event, batch_id=batch_id, ingested_ns=NOW_NS)
        assert item == expected

    def test_receive_asks_for_attributes_and_a_full_batch(self, harness: Harness) -> None:
        """receive_message asks for all message attributes (the schema lives there), up to 10
        messages, from the configured queue."""
        assert harness.consumer.poll_once() == 0
        (call,) = harness.sqs.receive_calls
        assert call["QueueUrl"] == QUEUE_URL
        assert call["MaxNumberOfMessages"] == 10
        assert call["MessageAttributeNames"] == ["All"]
        assert harness.journal == ["receive_message"]

    def test_one_write_for_many_messages(self, harness: Harness) -> None:
        """Messages of one receive are written together and deleted in one call."""
        messages = [_message(n, _event(n)) for n in range(4)]
        harness.consumer.process(messages)
        assert len(harness.ddb.writes) == 1
        assert harness.sqs.deleted_handles == [f"rh-{n}" for n in range(4)]

    def test_redelivery_writes_the_same_keys(self, harness: Harness) -> None:
        """Processing the same message twice puts items with identical keys, so the table
        holds each event once."""
        events = [_event(i) for i in range(5)]
        message = _message(1, *events)
        harness.consumer.process([copy.deepcopy(message)])
        harness.consumer.process([copy.deepcopy(message)])
        first, second = harness.ddb.writes
        keys = ("event_id", "bucket", "sk")

        def key_of(item: dict[str, Any]) -> tuple[str, ...]:
            return tuple(item[k]["S"] for k in keys)

        assert [key_of(item) for item in first] == [key_of(item) for item in second]
        assert len(harness.ddb.table) == 5
        assert harness.sqs.deleted_handles == ["rh-1", "rh-1"]


class TestWriteFailure:
    def test_message_is_not_deleted(self, harness: Harness) -> None:
        """When DynamoDB fails, the message stays on the queue for redelivery."""
        harness.ddb.error = ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "no"}},
            "BatchWriteItem",
        )
        harness.consumer.process([_message(1, _event(1))])
        assert harness.sqs.deleted == []
        assert harness.sqs.sent == []
        assert harness.consumer.stats.write_failures == 1
        assert harness.consumer.stats.events_written == 0

    def test_poison_is_still_deleted(self, harness: Harness) -> None:
        """A write failure does not hold back a poison message already dead-lettered."""
        harness.ddb.error = RuntimeError("connection reset")
        harness.consumer.process([_message(1, body="%%%"), _message(2, _event(2))])
        assert len(harness.sqs.sent) == 1
        assert harness.sqs.deleted_handles == ["rh-1"]

    def test_invalid_events_are_not_dead_lettered_when_the_write_fails(
        self, harness: Harness
    ) -> None:
        """The whole message comes back, so its invalid events are not dead-lettered yet."""
        harness.ddb.error = RuntimeError("connection reset")
        harness.consumer.process([_message(1, _event(1), _event(2, event_id="nope"))])
        assert harness.sqs.sent == []
        assert harness.sqs.deleted == []


class TestPoisonMessages:
    def test_dead_lettered_with_reason_and_deleted(self, harness: Harness) -> None:
        """A message that is not base64 goes to the DLQ as is, with the reason attribute, and
        is deleted; the good message beside it is written and deleted too."""
        good = [_event(1), _event(2)]
        poison = _message(1, body="this is not base64!")
        harness.sqs.receives.append([poison, _message(2, *good)])
        harness.consumer.poll_once()
        (sent,) = harness.sqs.sent
        assert sent["QueueUrl"] == DLQ_URL
        assert sent["MessageBody"] == "this is not base64!"
        attributes = sent["MessageAttributes"]
        assert "not base64" in attributes[REASON_ATTRIBUTE]["StringValue"]
        assert attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == "msg-1"
        for name, value in MESSAGE_ATTRIBUTES.items():
            assert attributes[name] == value  # original attributes are kept
        assert sent["MessageGroupId"]
        assert sent["MessageDeduplicationId"] == "msg-1"
        assert set(harness.ddb.table) == _ids(good)
        assert sorted(harness.sqs.deleted_handles) == ["rh-1", "rh-2"]
        assert harness.consumer.stats.dead_lettered == 1

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"MessageAttributes": {}}, "offpath-schema"),
            ({"Body": base64.b64encode(b"\xff\xff").decode()}, "not an AnalyticsBatch"),
            ({"Body": encode_batch(analytics_pb2.AnalyticsBatch())}, "batch_id"),
        ],
        ids=["no-schema", "not-a-batch", "no-batch-id"],
    )
    def test_each_poison_reason_reaches_the_dlq(
        self, harness: Harness, change: dict[str, Any], reason: str
    ) -> None:
        """Every kind of undecodable message is dead-lettered with its own reason."""
        message = {**_message(1, _event(1)), **change}
        harness.consumer.process([message])
        (sent,) = harness.sqs.sent
        assert reason in sent["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]
        assert harness.sqs.deleted_handles == ["rh-1"]
        assert harness.ddb.writes == []

    def test_standard_dlq_gets_no_fifo_fields(self) -> None:
        """A standard DLQ gets neither a group id nor a dedup id."""
        harness = Harness(dlq_url="https://sqs.eu-west-1.amazonaws.com/0/events-dlq")
        harness.consumer.process([_message(1, body="%%%")])
        (sent,) = harness.sqs.sent
        assert "MessageGroupId" not in sent
        assert "MessageDeduplicationId" not in sent

    def test_not_deleted_when_the_dlq_send_fails(self, harness: Harness) -> None:
        """If the DLQ cannot take the poison message, it stays on the source queue."""
        harness.sqs.send_error = ClientError(
            {"Error": {"Code": "InternalError", "Message": "no"}}, "SendMessage"
        )
        harness.consumer.process([_message(1, body="%%%"), _message(2, _event(2))])
        assert harness.sqs.deleted_handles == ["rh-2"]
        assert harness.consumer.stats.dead_lettered == 0


class TestInvalidEvents:
    def test_split_off_to_the_dlq(self, harness: Harness) -> None:
        """Valid events are written; the invalid one goes to the DLQ as its own batch with a
        reason; the source message is deleted."""
        valid = [_event(1), _event(3)]
        bad = _event(2, event_id="not-a-uuid")
        harness.consumer.process([_message(1, valid[0], bad, valid[1])])
        assert set(harness.ddb.table) == _ids(valid)
        (sent,) = harness.sqs.sent
        dead = decode_message(sent["MessageBody"], sent["MessageAttributes"])
        assert list(dead.events) == [bad]
        assert dead.producer_id == "producer-1"
        assert dead.batch_id
        reason = sent["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]
        assert "not-a-uuid" in reason
        assert "not a UUID" in reason
        assert sent["MessageDeduplicationId"] == "msg-1-invalid"
        assert harness.sqs.deleted_handles == ["rh-1"]
        assert harness.consumer.stats.invalid_events == 1
        assert harness.consumer.stats.events_written == 2

    def test_event_without_time_is_invalid(self, harness: Harness) -> None:
        """An event with no occurred_at cannot be placed in the time index: dead-lettered."""
        bad = _event(2)
        bad.ClearField("occurred_at")
        harness.consumer.process([_message(1, _event(1), bad)])
        (sent,) = harness.sqs.sent
        assert "occurred_at" in sent["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]
        assert bad.event_id not in harness.ddb.table

    def test_kept_when_the_dlq_send_fails(self, harness: Harness) -> None:
        """If the invalid events cannot be dead-lettered, the message is not deleted (the
        valid events are rewritten on redelivery)."""
        harness.sqs.send_error = ClientError(
            {"Error": {"Code": "InternalError", "Message": "no"}}, "SendMessage"
        )
        harness.consumer.process([_message(1, _event(1), _event(2, event_id="x"))])
        assert _event(1).event_id in harness.ddb.table
        assert harness.sqs.deleted == []


class TestRun:
    def test_survives_a_poll_error_and_stops(
        self, harness: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing receive is counted and backed off; the loop polls again and ends on stop."""

        class NoJitter:
            @staticmethod
            def random() -> float:
                return 0.0

        monkeypatch.setattr(consumer_module, "random", NoJitter)
        stop = threading.Event()
        harness.sqs.receive_error = ClientError(
            {"Error": {"Code": "InternalError", "Message": "no"}}, "ReceiveMessage"
        )
        original = harness.sqs.receive_message

        def receive_then_stop(**kwargs: Any) -> dict[str, Any]:
            if len(harness.sqs.receive_calls) == 1:
                stop.set()
            return original(**kwargs)

        monkeypatch.setattr(harness.sqs, "receive_message", receive_then_stop)
        harness.sqs.receives.append([_message(1, _event(1))])
        thread = threading.Thread(target=harness.consumer.run, args=(stop,), daemon=True)
        thread.start()
        thread.join(timeout=2.0)
        stop.set()  # ends the loop even if the assertions below fail
        assert not thread.is_alive()
        assert harness.consumer.stats.poll_errors == 1
        assert harness.sqs.deleted_handles == ["rh-1"]
