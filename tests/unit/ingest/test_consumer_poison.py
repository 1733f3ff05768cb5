"""Unit tests for the consumer's handling of poison, over FakeSqs and a real
EventStore on FakeDynamoDb: every kind of message that can never be stored is
dead-lettered with its reason on its first receive, and the good messages of
the same receive are stored and deleted in that same poll; a store that refuses
one message for good dead-letters that one only; an unavailable store
dead-letters nothing; a message received past the queue's maxReceiveCount is
dead-lettered by the consumer when the endpoint did not move it."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Unpack

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from offpath.dev import bootstrap
from offpath.ingest.consumer import (
    DEAD_LETTER_KINDS,
    MAX_RECEIVES,
    ConsumerStats,
    EventWriter,
    StoreFailure,
    store_failure,
)
from offpath.ingest.decode import MAX_TIMESTAMP_SECONDS
from offpath.ingest.metrics import IngestCollector
from offpath.ingest.store import EventStore, WriteError
from offpath.kit.sqs import (
    MESSAGE_ATTRIBUTES,
    SOURCE_ID_ATTRIBUTE,
    VERSION_ATTRIBUTE,
    decode_message,
    encode_batch,
)
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeMessage
from offpath.v1 import analytics_pb2, query_pb2

from .test_consumer import VISIBILITY_S, Harness, _event, _ids, _reason

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import PutItemInputTypeDef, PutItemOutputTypeDef

YEAR_10000_S = MAX_TIMESTAMP_SECONDS + 1
# A day either side of the harness's events (1_790_000_000 s).
AROUND_EVENTS = (1_789_913_600 * 10**9, 1_790_086_400 * 10**9)


def _year_10000(i: int) -> analytics_pb2.AnalyticsEvent:
    event = _event(i)
    event.occurred_at.seconds = YEAR_10000_S
    return event


def _raw(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _changed(i: int, change: Callable[[analytics_pb2.AnalyticsEvent], object]) -> str:
    event = _event(i)
    change(event)
    return encode_batch(analytics_pb2.AnalyticsBatch(batch_id=f"poison-{i}", events=[event]))


POISON: list[tuple[str, str | None, dict[str, Any], str]] = [
    ("garbage", "this is not base64!", MESSAGE_ATTRIBUTES, "not base64"),
    ("not-protobuf", _raw(b"\xff\xfe\xfd"), MESSAGE_ATTRIBUTES, "not an AnalyticsBatch"),
    (
        "query-request",
        _raw(query_pb2.QueryRequest(query="what is k8s", top_k=3).SerializeToString()),
        MESSAGE_ATTRIBUTES,
        "not an AnalyticsBatch",
    ),
    (
        "health-check-response",
        _raw(health_pb2.HealthCheckResponse(status=1).SerializeToString()),
        MESSAGE_ATTRIBUTES,
        "not an AnalyticsBatch",
    ),
    (
        "wrong-version",
        None,
        {**MESSAGE_ATTRIBUTES, VERSION_ATTRIBUTE: {"DataType": "String", "StringValue": "7"}},
        "offpath-schema-version",
    ),
    ("no-schema", None, {}, "offpath-schema"),
    (
        "empty-batch",
        encode_batch(analytics_pb2.AnalyticsBatch(batch_id="empty-1")),
        MESSAGE_ATTRIBUTES,
        "no events",
    ),
    (
        "invalid-event-id",
        _changed(1, lambda e: setattr(e, "event_id", "not-a-uuid")),
        MESSAGE_ATTRIBUTES,
        "not a UUID",
    ),
    (
        "year-10000",
        _changed(2, lambda e: setattr(e.occurred_at, "seconds", YEAR_10000_S)),
        MESSAGE_ATTRIBUTES,
        "after 9999-12-31",
    ),
    (
        "negative-nanos",
        _changed(3, lambda e: setattr(e.occurred_at, "nanos", -5)),
        MESSAGE_ATTRIBUTES,
        "nanos -5",
    ),
    (
        "oversize",
        _changed(4, lambda e: setattr(e, "query", "q" * 250_000)),
        MESSAGE_ATTRIBUTES,
        "item limit",
    ),
]


@pytest.fixture
def harness() -> Harness:
    h = Harness()
    h.resolve()
    return h


class TestFirstReceive:
    @pytest.mark.parametrize(
        ("body", "attributes", "words"),
        [p[1:] for p in POISON],
        ids=[p[0] for p in POISON],
    )
    def test_dead_lettered_while_the_good_messages_land(
        self, harness: Harness, body: str | None, attributes: dict[str, Any], words: str
    ) -> None:
        """The poison message goes to the DLQ as it came with its reason on its first
        receive; the good messages around it (the same FIFO group, the same receive)
        are written and deleted in that poll, and nothing is put back."""
        before, after = [_event(10), _event(11)], [_event(12)]
        harness.send(*before)
        poison_id = harness.send(_event(99), body=body, attributes=attributes)
        harness.send(*after)
        assert harness.consumer.poll_once() == 3
        (dead,) = harness.dead
        assert dead.receive_count == 0  # sent by the consumer, not moved by the redrive
        assert words in _reason(dead)
        assert dead.attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == poison_id
        assert harness.stored_ids == _ids([*before, *after])
        assert harness.left == []
        assert harness.sqs.journal.of("change_message_visibility_batch") == []
        stats = harness.consumer.stats
        assert (stats.dead_lettered, stats.deleted, stats.store_backoffs) == (1, 3, 0)

    def test_year_10000_beside_good_events_of_its_own_batch(self, harness: Harness) -> None:
        """The tester's case: one event dated in year 10000 among good ones. The good
        events land at once, the bad one goes to the DLQ in a batch of its own with the
        reason, and the message is deleted."""
        good = [_event(1), _event(3)]
        bad = _year_10000(2)
        source = harness.send(good[0], bad, good[1])
        harness.send(_event(4))
        assert harness.consumer.poll_once() == 2
        assert harness.stored_ids == _ids([*good, _event(4)])
        (dead,) = harness.dead
        assert list(decode_message(dead.body, dead.attributes).events) == [bad]
        assert "after 9999-12-31T23:59:59Z" in _reason(dead)
        assert bad.event_id in _reason(dead)
        assert dead.dedup_id == f"{source}-invalid"
        assert harness.left == []

    def test_redelivered_mixed_message_counts_once(self, harness: Harness) -> None:
        """A mixed message whose delete failed comes back: its good events are not
        counted twice in the rollups, and its bad event is dead-lettered once (the
        letter's de-duplication id is the same)."""
        good = [_event(1), _event(2)]
        harness.send(good[0], _year_10000(3), good[1])
        harness.sqs.journal.inject(
            "delete_message_batch",
            *[client_error("InternalError", "no", "DeleteMessageBatch") for _ in range(3)],
        )
        harness.consumer.poll_once()
        summary = harness.store.summary(*AROUND_EVENTS)
        harness.sqs.advance(VISIBILITY_S + 1)
        assert harness.consumer.poll_once() == 1
        again = harness.store.summary(*AROUND_EVENTS)
        assert summary.event_count == again.event_count == 2
        assert len(harness.dead) == 1  # the FIFO DLQ dropped the second copy
        assert harness.left == []

    def test_log_line_per_dead_letter(self, harness: Harness) -> None:
        """Each dead letter is one structured warning with the message id, kind, reason
        and event ids, never the query text."""
        secret = "a private question"
        bad = _year_10000(2)
        bad.query = secret
        source = harness.send(_event(1), bad)
        poison = harness.send(body="%%%")
        with capture_logs() as logs:
            harness.consumer.poll_once()
        lines = [line for line in logs if line["event"].endswith("_dead_lettered")]
        by_id = {line["message_id"]: line for line in lines}
        assert set(by_id) == {source, poison}
        assert by_id[source]["event_ids"] == [bad.event_id]
        assert by_id[source]["kind"] == "invalid_events"
        assert "after 9999" in by_id[source]["reason"]
        assert by_id[poison]["kind"] == "undecodable"
        assert by_id[poison]["event_ids"] == []
        assert all(line["log_level"] == "warning" for line in lines)
        assert secret not in repr(logs)


class RefusingDynamoDb(FakeDynamoDb):
    """DynamoDB refusing every put of one batch's items as invalid, as it does an
    item it cannot hold."""

    def __init__(self, batch_id: str) -> None:
        super().__init__()
        self.refused = batch_id

    def put_item(self, **kwargs: Unpack[PutItemInputTypeDef]) -> PutItemOutputTypeDef:
        item: Any = kwargs["Item"]
        if item["batch_id"] == {"S": self.refused}:
            raise client_error(
                "ValidationException", "Item size has exceeded the maximum allowed size", "PutItem"
            )
        return super().put_item(**kwargs)


class FailingFor:
    """A store that raises ``error`` (as the store raises: a WriteError from it)
    whenever a write carries ``batch_id``, and writes otherwise."""

    def __init__(self, store: EventStore, batch_id: str, error: BaseException) -> None:
        self._store = store
        self._batch_id = batch_id
        self._error = error
        self.calls: list[list[str]] = []

    def write(
        self,
        batches: Iterable[tuple[str, Sequence[analytics_pb2.AnalyticsEvent]]],
        *,
        ingested_ns: int,
    ) -> int:
        batches = list(batches)
        self.calls.append([batch_id for batch_id, _ in batches])
        if any(batch_id == self._batch_id for batch_id, _ in batches):
            raise WriteError(f"PutItem failed: {self._error}") from self._error
        return self._store.write(batches, ingested_ns=ingested_ns)


BAD_BATCH = "0190a6f2-0000-7000-8000-00000000bad0"


def _send_three(harness: Harness) -> list[analytics_pb2.AnalyticsEvent]:
    """A good message, one with batch BAD_BATCH, another good one; returns the good events."""
    harness.send(_event(1))
    harness.send(_event(2), batch_id=BAD_BATCH)
    harness.send(_event(3))
    return [_event(1), _event(3)]


class TestStoreRefusals:
    def test_dynamodb_validation_error_dead_letters_that_message_only(self) -> None:
        harness = Harness(ddb=RefusingDynamoDb(BAD_BATCH))
        harness.resolve()
        good = _send_three(harness)
        assert harness.consumer.poll_once() == 3
        assert harness.stored_ids == _ids(good)
        (dead,) = harness.dead
        assert decode_message(dead.body, dead.attributes).batch_id == BAD_BATCH
        assert "ValidationException" in _reason(dead)
        assert "store refused" in _reason(dead)
        assert harness.left == []
        assert harness.consumer.stats.write_failures == 0

    @pytest.mark.parametrize(
        "error",
        [ValueError("Timestamp is not valid"), OverflowError("date value out of range")],
        ids=["ValueError", "OverflowError"],
    )
    def test_conversion_error_dead_letters_that_message_only(self, error: Exception) -> None:
        stores: list[FailingFor] = []

        def failing(store: EventStore) -> EventWriter:
            stores.append(FailingFor(store, BAD_BATCH, error))
            return stores[0]

        harness = Harness(store=failing)
        harness.resolve()
        good = _send_three(harness)
        harness.consumer.poll_once()
        assert harness.stored_ids == _ids(good)
        (dead,) = harness.dead
        assert type(error).__name__ in _reason(dead)
        assert harness.left == []
        # One write of all three, then each alone.
        assert [len(call) for call in stores[0].calls] == [3, 1, 1, 1]

    def test_bug_backs_off_that_message_only(self) -> None:
        """An error that says nothing certain (a bug) dead-letters nothing: that message
        is put back with a delay; the others land."""
        harness = Harness(
            store=lambda store: FailingFor(store, BAD_BATCH, KeyError("oops")),
        )
        harness.resolve()
        good = _send_three(harness)
        harness.consumer.poll_once()
        assert harness.stored_ids == _ids(good)
        assert harness.dead == []
        assert len(harness.left) == 1
        (call,) = harness.sqs.journal.of("change_message_visibility_batch")
        assert len(call["Entries"]) == 1
        assert call["Entries"][0]["VisibilityTimeout"] > 0

    @pytest.mark.parametrize(
        "code",
        ["ProvisionedThroughputExceededException", "InternalServerError", "ThrottlingException"],
    )
    def test_unavailable_store_dead_letters_nothing(self, harness: Harness, code: str) -> None:
        """Throttling and 5xx put every message back with a delay, in one write (no
        message-by-message retry against a store that is down) and none is dead-lettered."""
        harness.ddb.journal.inject("put_item", *[client_error(code, "no", "PutItem")] * 3)
        _send_three(harness)
        harness.consumer.poll_once()
        assert harness.dead == []
        assert len(harness.left) == 3
        assert harness.consumer.stats.store_backoffs == 3
        assert harness.consumer.stats.write_failures == 1


class TestReceiveLimit:
    def test_limit_is_the_queues_max_receive_count(self) -> None:
        """The backstop acts where SQS would: after the maxReceiveCount that set-up
        gives the queue (and deploy/aws, which its tests hold to set-up's)."""
        assert MAX_RECEIVES == bootstrap.MAX_RECEIVE_COUNT

    def test_message_past_max_receive_count_is_dead_lettered_by_the_consumer(
        self, harness: Harness
    ) -> None:
        """On an endpoint that never applies the redrive policy (the harness queue has
        none, as moto behaves), a message that keeps failing is dead-lettered by the
        consumer on the receive after the queue's maxReceiveCount, with how often it
        came; one within the count is tried again."""
        harness.ddb.journal.inject(
            "put_item",
            *[client_error("InternalServerError", "down", "PutItem")] * MAX_RECEIVES,
        )
        harness.send(_event(1))
        for _ in range(MAX_RECEIVES):
            assert harness.consumer.poll_once() == 1
            assert harness.dead == []
            harness.sqs.advance(3600)
        assert harness.consumer.poll_once() == 1
        (dead,) = harness.dead
        assert f"received {MAX_RECEIVES + 1} times" in _reason(dead)
        assert harness.left == []
        assert harness.stored_ids == set()

    def test_poison_keeps_its_own_reason_past_the_count(self, harness: Harness) -> None:
        """A poison message received late (its DLQ send failed before) is dead-lettered
        for what it is, not for the count."""
        harness.send(body="%%%")
        harness.sqs.journal.inject(
            "send_message", *[client_error("InternalError", "no", "SendMessage")] * MAX_RECEIVES
        )
        for _ in range(MAX_RECEIVES):
            harness.consumer.poll_once()
            harness.sqs.advance(VISIBILITY_S + 1)
        harness.consumer.poll_once()
        dead: list[FakeMessage] = harness.dead
        assert len(dead) == 1
        assert "not base64" in _reason(dead[0])


class TestStoreFailure:
    @pytest.mark.parametrize(
        ("error", "kind"),
        [
            (client_error("ValidationException", "too big", "PutItem"), "refused"),
            (
                client_error("ProvisionedThroughputExceededException", "slow", "PutItem"),
                "unavailable",
            ),
            (client_error("ResourceNotFoundException", "no table", "PutItem"), "unavailable"),
            (client_error("AccessDeniedException", "no", "PutItem"), "unavailable"),
            (ValueError("bad time"), "refused"),
            (OverflowError("too far"), "refused"),
            (WriteError("rollups of x not applied after 8 attempts"), "unavailable"),
            (RuntimeError("connection reset"), "error"),
            (KeyError("bug"), "error"),
        ],
    )
    def test_kinds(self, error: Exception, kind: str) -> None:
        wrapped = WriteError("failed")
        wrapped.__cause__ = error
        failure = store_failure(error if isinstance(error, WriteError) else wrapped)
        assert isinstance(failure, StoreFailure)
        assert failure.kind == kind
        assert failure.detail

    def test_cancelled_transaction_by_reason(self) -> None:
        invalid = client_error("TransactionCanceledException", "cancelled", "TransactWriteItems")
        invalid.response["CancellationReasons"] = [
            {"Code": "None"},
            {"Code": "ValidationError"},
        ]
        throttled = client_error("TransactionCanceledException", "cancelled", "TransactWriteItems")
        throttled.response["CancellationReasons"] = [{"Code": "ThrottlingError"}]
        assert store_failure(invalid).kind == "refused"
        assert store_failure(throttled).kind == "unavailable"


class TestMetrics:
    def test_dead_letters_are_counted_by_kind(self, harness: Harness) -> None:
        """/metrics shows each dead letter under its kind, every kind from zero."""
        harness.send(body="%%%")
        harness.send(body=_raw(query_pb2.QueryRequest(query="q", top_k=1).SerializeToString()))
        harness.send(body=encode_batch(analytics_pb2.AnalyticsBatch(batch_id="e")))
        harness.send(_event(1), _year_10000(2))
        harness.consumer.poll_once()
        registry = CollectorRegistry()
        registry.register(IngestCollector(harness.consumer))
        text = generate_latest(registry).decode()
        counts = {
            kind: registry.get_sample_value("offpath_ingest_dead_letters_total", {"kind": kind})
            for kind in DEAD_LETTER_KINDS
        }
        assert counts == {
            **dict.fromkeys(DEAD_LETTER_KINDS, 0.0),
            "undecodable": 1.0,
            "foreign": 1.0,
            "empty": 1.0,
            "invalid_events": 1.0,
        }
        assert "# HELP offpath_ingest_dead_letters_total" in text

    def test_pollers_counts_add_up(self) -> None:
        first, second = ConsumerStats(), ConsumerStats()
        first.count_dead_letter("empty")
        second.count_dead_letter("empty")
        second.count_dead_letter("store_refused")
        total = ConsumerStats.total([first, second])
        assert total.dead_letter_kinds["empty"] == 2
        assert total.dead_letter_kinds["store_refused"] == 1
        assert first.dead_letter_kinds["empty"] == 1  # the parts are left as they were
