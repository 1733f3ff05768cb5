"""Unit tests for offpath.ingest.lambda_handler over synthetic SQS events in
Lambda's shape, the shared FakeSqs and a real EventStore on FakeDynamoDb:
writes and rollups exactly once, poison and invalid events to the DLQ as the
consumer sends them, batchItemFailures for what could not be written, the
FIFO group rule, and the module-level handler built once per container."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from offpath.ingest import lambda_handler, rollups
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.lambda_handler import BatchResponse, SqsBatchHandler, message_attributes
from offpath.ingest.settings import ENV_ROLLUP_TABLE_NAME, ENV_TABLE_NAME, ENV_TIME_SHARDS
from offpath.ingest.store import (
    CLAIM_ATTRIBUTE,
    TABLE_KEY,
    EventStore,
    create_table_request,
    rollup_table_for,
)
from offpath.kit import aws
from offpath.kit.settings import SettingsError
from offpath.kit.sqs import (
    ENV_DLQ_NAME,
    ENV_DLQ_URL,
    ENV_QUEUE_NAME,
    MESSAGE_ATTRIBUTES,
    REASON_ATTRIBUTE,
    SOURCE_ID_ATTRIBUTE,
    QueueNames,
    decode_message,
    encode_batch,
)
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeMessage, FakeSqs
from offpath.v1 import analytics_pb2

QUEUE = "events.fifo"
DLQ = "events-dlq.fifo"
TABLE = "events"
QUEUE_ARN = f"arn:aws:sqs:us-east-1:000000000000:{QUEUE}"
NOW_NS = 1_790_000_100_000_000_000
NO_FAILURES: BatchResponse = {"batchItemFailures": []}


def lambda_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Message attributes as Lambda's SQS event puts them in a record."""
    return {
        name: {
            "stringValue": attribute["StringValue"],
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": attribute["DataType"],
        }
        for name, attribute in attributes.items()
    }


def record(
    n: int,
    *events: analytics_pb2.AnalyticsEvent,
    group: str | None = "producer-1",
    body: str | None = None,
    attributes: Mapping[str, Any] = MESSAGE_ATTRIBUTES,
) -> dict[str, Any]:
    """The n-th record of an SQS event as Lambda builds it: one message carrying
    a batch of ``events`` (or ``body``), de-duplicated by its batch id."""
    batch_id = f"0190a6f2-0000-7000-8000-{n:012d}"
    if body is None:
        body = encode_batch(
            analytics_pb2.AnalyticsBatch(batch_id=batch_id, producer_id="producer-1", events=events)
        )
    system = {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1790000000000",
        "SenderId": "AIDAEXAMPLE",
        "ApproximateFirstReceiveTimestamp": "1790000000100",
    }
    if group is not None:
        system |= {
            "SequenceNumber": f"1884{n:016d}",
            "MessageGroupId": group,
            "MessageDeduplicationId": batch_id,
        }
    return {
        "messageId": f"059f36b4-87a3-44ab-83d2-{n:012d}",
        "receiptHandle": f"AQEB-handle-{n}",
        "body": body,
        "attributes": system,
        "messageAttributes": lambda_attributes(attributes),
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def sqs_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def _event(i: int, event_id: str | None = None) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id if event_id is not None else f"0190a6f2-7a55-7cc1-9d2b-{i:012x}",
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=f"query {i}",
        model="template-v1",
        token_count=5,
        producer_id="producer-1",
    )
    event.occurred_at.FromNanoseconds(NOW_NS - 1_000_000_000)
    event.processing_time.FromNanoseconds(3_000_000)
    event.matched_skills.add(name="Kubernetes", score=0.5)
    return event


def _failed(*records: Mapping[str, Any]) -> BatchResponse:
    return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records]}


def _reason(message: FakeMessage) -> str:
    return str(message.attributes[REASON_ATTRIBUTE]["StringValue"])


class Harness:
    """FakeSqs with the queue and its DLQ, a real EventStore on FakeDynamoDb,
    and a handler dead-lettering to that DLQ."""

    def __init__(self) -> None:
        self.sqs = FakeSqs()
        self.queue_url = self.sqs.add_queue(QUEUE, FifoQueue="true")
        self.dlq_url = self.sqs.add_queue(DLQ, FifoQueue="true")
        self.ddb = FakeDynamoDb()
        self.ddb.create_table(**create_table_request(TABLE))
        self.ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
        self.store = EventStore(self.ddb, TABLE, sleep=lambda _: None)
        self.handler = SqsBatchHandler(self.sqs, self.store, self.dlq_url, clock_ns=lambda: NOW_NS)

    @property
    def stored_ids(self) -> set[str]:
        return {item[TABLE_KEY]["S"] for item in self.ddb.items(TABLE)}

    @property
    def rollup_items(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every rollup item (markers left out), by key."""
        return {
            (item[rollups.ROLLUP_PARTITION]["S"], item[rollups.ROLLUP_SORT]["S"]): item
            for item in self.ddb.items(rollup_table_for(TABLE))
            if item[rollups.ROLLUP_PARTITION]["S"].startswith("r#")
        }

    @property
    def dead(self) -> list[FakeMessage]:
        return list(self.sqs.queue(self.dlq_url).messages)

    def event_count(self) -> int:
        return self.store.summary(NOW_NS - 3 * 3600 * 10**9, NOW_NS + 10**9).event_count

    def fail_puts(self, before: int = 0) -> None:
        """The put after ``before`` successful ones fails past botocore's retries."""
        self.ddb.journal.inject(
            "put_item",
            *([lambda _request: None] * before),
            client_error("ProvisionedThroughputExceededException", "slow down", "PutItem"),
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()


def _ids(events: Sequence[analytics_pb2.AnalyticsEvent]) -> set[str]:
    return {e.event_id for e in events}


class TestMessageAttributes:
    def test_lambda_shape_becomes_boto3_shape(self) -> None:
        """String values keep their text, binary values are decoded from base64,
        and an attribute with no value is left out."""
        converted = message_attributes(
            {
                "s": {"stringValue": "v", "dataType": "String"},
                "n": {"stringValue": "7", "dataType": "Number"},
                "b": {"binaryValue": base64.b64encode(b"\x00\x01").decode(), "dataType": "Binary"},
                "empty": {"stringListValues": [], "binaryListValues": [], "dataType": "String"},
            }
        )
        assert converted == {
            "s": {"DataType": "String", "StringValue": "v"},
            "n": {"DataType": "Number", "StringValue": "7"},
            "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        }

    def test_our_attributes_decode_as_the_consumer_reads_them(self) -> None:
        """The schema attributes of a record, converted, are what decode_message
        accepts: the batch comes out whole."""
        body = record(1, _event(1))["body"]
        attributes = message_attributes(lambda_attributes(MESSAGE_ATTRIBUTES))
        assert decode_message(body, attributes).events[0].event_id == _event(1).event_id


class TestWrites:
    def test_events_and_rollups_written_nothing_failed(self, harness: Harness) -> None:
        """Every event of every record is stored and counted in the rollups, and
        the response reports no failure (Lambda deletes every record)."""
        first, second = [_event(1), _event(2)], [_event(3)]
        response = harness.handler.handle(sqs_event(record(1, *first), record(2, *second)))
        assert response == NO_FAILURES
        assert harness.stored_ids == _ids(first + second)
        assert harness.event_count() == 3
        assert harness.dead == []
        assert harness.sqs.journal.calls == []

    def test_events_are_claimed_under_the_batch_id(self, harness: Harness) -> None:
        """Items are claimed by the batch id in the body, the id the consumer
        claims under, not the SQS message id."""
        rec = record(1, _event(1))
        harness.handler.handle(sqs_event(rec))
        (item,) = harness.ddb.items(TABLE)
        batch = decode_message(rec["body"], MESSAGE_ATTRIBUTES)
        assert item[CLAIM_ATTRIBUTE]["S"] == batch.batch_id != rec["messageId"]

    def test_redelivered_event_changes_no_rollup(self, harness: Harness) -> None:
        """The same SQS event handled twice (Lambda retries, or the message comes
        back) leaves every rollup item and the event count as they were."""
        event = sqs_event(record(1, _event(1), _event(2)), record(2, _event(3)))
        assert harness.handler.handle(event) == NO_FAILURES
        once = harness.rollup_items
        assert harness.handler.handle(event) == NO_FAILURES
        assert harness.rollup_items == once
        assert harness.event_count() == 3
        assert harness.store.stats.replays >= 2

    def test_message_the_consumer_wrote_counts_once(self, harness: Harness) -> None:
        """A message the pod's consumer wrote and Lambda then gets again (the
        ingest mode switched while it was in flight) adds nothing: both claim
        under the same id."""
        events = [_event(1), _event(2)]
        rec = record(1, *events)
        harness.sqs.send_message(
            QueueUrl=harness.queue_url,
            MessageBody=rec["body"],
            MessageAttributes=MESSAGE_ATTRIBUTES,
            MessageGroupId="producer-1",
            MessageDeduplicationId="d-1",
        )
        consumer = Consumer(
            harness.sqs, harness.store, Queues(QueueNames(QUEUE, DLQ)), wait_seconds=0
        )
        assert consumer.resolve(threading.Event())
        assert consumer.poll_once() == 1
        once = harness.rollup_items
        assert harness.handler.handle(sqs_event(rec)) == NO_FAILURES
        assert harness.rollup_items == once
        assert harness.event_count() == 2


class TestDeadLetters:
    def test_poison_is_dead_lettered_with_its_reason_and_not_failed(self, harness: Harness) -> None:
        """A body that is not base64 goes to the DLQ as is, with the reason and the
        source message id, and is not reported: the good record beside it is written."""
        poison = record(1, body="this is not base64!")
        response = harness.handler.handle(sqs_event(poison, record(2, _event(2))))
        assert response == NO_FAILURES
        (dead,) = harness.dead
        assert dead.body == "this is not base64!"
        assert "not base64" in _reason(dead)
        assert dead.attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == poison["messageId"]
        assert harness.stored_ids == {_event(2).event_id}

    def test_missing_schema_attribute_is_poison(self, harness: Harness) -> None:
        """A record without our schema attributes (read from Lambda's
        messageAttributes shape) is dead-lettered naming the attribute."""
        harness.handler.handle(sqs_event(record(1, _event(1), attributes={})))
        (dead,) = harness.dead
        assert "offpath-schema" in _reason(dead)
        assert harness.stored_ids == set()

    def test_poison_request_is_the_consumers(self, harness: Harness) -> None:
        """The DLQ send for a poison message is the very request the consumer
        makes for the same message: same body, attributes, reason, group and
        de-duplication id, so a FIFO DLQ keeps one copy whoever sent it."""
        sent = harness.sqs.send_message(
            QueueUrl=harness.queue_url,
            MessageBody="%%%",
            MessageAttributes=MESSAGE_ATTRIBUTES,
            MessageGroupId="producer-1",
            MessageDeduplicationId="d-1",
        )
        consumer = Consumer(
            harness.sqs, harness.store, Queues(QueueNames(QUEUE, DLQ)), wait_seconds=0
        )
        assert consumer.resolve(threading.Event())
        consumer.poll_once()
        rec = record(1, body="%%%") | {"messageId": sent["MessageId"]}
        harness.handler.handle(sqs_event(rec))
        by_consumer, by_lambda = harness.sqs.journal.of("send_message")[-2:]
        assert by_lambda == by_consumer
        assert len(harness.dead) == 1

    def test_invalid_events_are_split_off(self, harness: Harness) -> None:
        """Invalid events of a good record go to the DLQ as a batch of their own
        with every problem in the reason; the valid ones are written; nothing fails."""
        rec = record(1, _event(1), _event(2, event_id="not-a-uuid"))
        assert harness.handler.handle(sqs_event(rec)) == NO_FAILURES
        assert harness.stored_ids == {_event(1).event_id}
        (dead,) = harness.dead
        assert _reason(dead).startswith("invalid events: event_id 'not-a-uuid'")
        assert dead.attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == f"{rec['messageId']}-invalid"
        letter = decode_message(dead.body, dead.attributes)
        assert [e.event_id for e in letter.events] == ["not-a-uuid"]

    def test_failed_dead_letter_is_reported(self, harness: Harness) -> None:
        """When the DLQ send fails, the poison record is reported for retry
        (after maxReceiveCount SQS's redrive moves it)."""
        harness.sqs.journal.inject("send_message", client_error("InternalError", "no", "Send"))
        poison = record(1, body="%%%")
        assert harness.handler.handle(sqs_event(poison)) == _failed(poison)
        assert harness.dead == []


class TestStoreFailures:
    @pytest.mark.parametrize("operation", ["put_item", "transact_write_items"])
    def test_failed_write_is_reported(self, harness: Harness, operation: str) -> None:
        """A record whose event or rollup write fails is in batchItemFailures,
        and nothing of it is dead-lettered."""
        harness.ddb.journal.inject(
            operation, client_error("ProvisionedThroughputExceededException", "no", "Write")
        )
        rec = record(1, _event(1), _event(2, event_id="not-a-uuid"))
        assert harness.handler.handle(sqs_event(rec)) == _failed(rec)
        assert harness.dead == []

    def test_only_the_failed_record_is_reported_on_a_standard_queue(self, harness: Harness) -> None:
        """Without message groups, records after a failed one are still handled:
        only the failed record comes back."""
        records = [record(n, _event(n), group=None) for n in (1, 2, 3)]
        harness.fail_puts(before=1)
        assert harness.handler.handle(sqs_event(*records)) == _failed(records[1])
        assert harness.stored_ids == {_event(1).event_id, _event(3).event_id}

    def test_fifo_group_stops_at_its_first_failure(self, harness: Harness) -> None:
        """On a FIFO queue, the failed record and every later record of its group
        are reported, untouched (not written, not dead-lettered); other groups
        go on."""
        a1, b1 = record(1, _event(1), group="a"), record(2, _event(2), group="b")
        a2, a3 = record(3, _event(3), group="a"), record(4, body="%%%", group="a")
        b2 = record(5, _event(5), group="b")
        harness.fail_puts(before=0)
        response = harness.handler.handle(sqs_event(a1, b1, a2, a3, b2))
        assert response == _failed(a1, a2, a3)
        assert harness.stored_ids == {_event(2).event_id, _event(5).event_id}
        assert harness.dead == []

    def test_retried_records_are_written_once(self, harness: Harness) -> None:
        """The records reported failed, handled again once DynamoDB answers, are
        written and counted once, beside those done the first time."""
        records = [record(n, _event(n), group="a") for n in (1, 2, 3)]
        harness.fail_puts(before=1)
        response = harness.handler.handle(sqs_event(*records))
        assert response == _failed(records[1], records[2])
        assert harness.handler.handle(sqs_event(records[1], records[2])) == NO_FAILURES
        assert harness.stored_ids == {_event(n).event_id for n in (1, 2, 3)}
        assert harness.event_count() == 3


@dataclass
class Container:
    """A fresh Lambda container: no handler built yet, AWS clients from the
    harness's fakes (``made`` names each client made)."""

    fakes: Harness
    made: list[str] = field(default_factory=list)


class TestEntryPoint:
    @pytest.fixture
    def container(self, monkeypatch: pytest.MonkeyPatch) -> Container:
        """A fresh container with the stack's names in OFFPATH_* variables, and
        logging left as the tests have it."""
        container = Container(Harness())

        def sqs_client(*_args: object) -> FakeSqs:
            container.made.append("sqs")
            return container.fakes.sqs

        def dynamodb_client(*_args: object) -> FakeDynamoDb:
            container.made.append("dynamodb")
            return container.fakes.ddb

        monkeypatch.setattr(lambda_handler, "_handler", None)
        monkeypatch.setattr(lambda_handler, "configure_logging", lambda *_: None)
        monkeypatch.setattr(aws, "sqs_client", sqs_client)
        monkeypatch.setattr(aws, "dynamodb_client", dynamodb_client)
        for name in (ENV_DLQ_URL, ENV_ROLLUP_TABLE_NAME):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(ENV_QUEUE_NAME, QUEUE)
        monkeypatch.setenv(ENV_DLQ_NAME, DLQ)
        monkeypatch.setenv(ENV_TABLE_NAME, TABLE)
        return container

    def test_clients_are_made_once_per_container(self, container: Container) -> None:
        """Two invocations share one SQS client, one DynamoDB client and one DLQ
        look-up (by the name in OFFPATH_SQS_DLQ_NAME), and both do their work."""
        first = lambda_handler.handler(sqs_event(record(1, _event(1))), None)
        second = lambda_handler.handler(sqs_event(record(2, body="%%%")), None)
        assert first == second == NO_FAILURES
        assert sorted(container.made) == ["dynamodb", "sqs"]
        assert container.fakes.sqs.journal.of("get_queue_url") == [{"QueueName": DLQ}]
        assert container.fakes.stored_ids == {_event(1).event_id}
        assert len(container.fakes.dead) == 1

    def test_bad_setting_fails_naming_the_variable(
        self, container: Container, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An out-of-range OFFPATH_* value fails the invocation with the
        variable's name, before any client is made."""
        monkeypatch.setenv(ENV_TIME_SHARDS, "0")
        with pytest.raises(SettingsError, match=rf"^{ENV_TIME_SHARDS}="):
            lambda_handler.handler(sqs_event(record(1, _event(1))), None)
        assert container.made == []
