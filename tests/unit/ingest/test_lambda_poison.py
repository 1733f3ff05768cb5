"""Unit tests for the Lambda handler's handling of poison, over synthetic SQS
events, FakeSqs and a real EventStore on FakeDynamoDb: the consumer's verdicts,
reached the same way. A record that can never be stored is dead-lettered on its
first receive and reported done (retrying it could only fail again); the good
records of the same invocation are written; a record the store refuses for good
is dead-lettered, one the store could not take for now is reported for retry."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from structlog.testing import capture_logs

from offpath.ingest.consumer import MAX_RECEIVES
from offpath.ingest.decode import MAX_TIMESTAMP_SECONDS
from offpath.ingest.lambda_handler import SqsBatchHandler
from offpath.ingest.store import WriteError
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, SOURCE_ID_ATTRIBUTE, decode_message, encode_batch
from offpath.testing.calls import client_error
from offpath.v1 import analytics_pb2, query_pb2

from .test_lambda_handler import (
    NO_FAILURES,
    NOW_NS,
    Harness,
    _event,
    _failed,
    _ids,
    _reason,
    record,
    sqs_event,
)


def _raw(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _year_10000(i: int) -> analytics_pb2.AnalyticsEvent:
    event = _event(i)
    event.occurred_at.seconds = MAX_TIMESTAMP_SECONDS + 1
    return event


@pytest.fixture
def harness() -> Harness:
    return Harness()


class TestFirstReceive:
    @pytest.mark.parametrize(
        ("body", "words"),
        [
            (_raw(query_pb2.QueryRequest(query="q", top_k=2).SerializeToString()), "producer_id"),
            (_raw(health_pb2.HealthCheckResponse(status=1).SerializeToString()), "batch_id"),
            (encode_batch(analytics_pb2.AnalyticsBatch(batch_id="b")), "no events"),
            (
                encode_batch(analytics_pb2.AnalyticsBatch(batch_id="b", events=[_year_10000(9)])),
                "after 9999-12-31",
            ),
        ],
        ids=["QueryRequest", "HealthCheckResponse", "empty-batch", "year-10000-only"],
    )
    def test_poison_record_is_dead_lettered_and_done(
        self, harness: Harness, body: str, words: str
    ) -> None:
        poison = record(1, body=body)
        good = record(2, _event(2))
        assert harness.handler.handle(sqs_event(poison, good)) == NO_FAILURES
        (dead,) = harness.dead
        assert words in _reason(dead)
        assert dead.body == body
        assert dead.attributes[SOURCE_ID_ATTRIBUTE]["StringValue"] == poison["messageId"]
        assert harness.stored_ids == {_event(2).event_id}

    def test_year_10000_beside_good_events(self, harness: Harness) -> None:
        """The good events of the record and of the next one land; the bad one is
        dead-lettered in a batch of its own; nothing is reported for retry."""
        bad = _year_10000(2)
        mixed = record(1, _event(1), bad, _event(3))
        after = record(2, _event(4))
        with capture_logs() as logs:
            assert harness.handler.handle(sqs_event(mixed, after)) == NO_FAILURES
        assert harness.stored_ids == _ids([_event(1), _event(3), _event(4)])
        (dead,) = harness.dead
        assert list(decode_message(dead.body, dead.attributes).events) == [bad]
        assert "after 9999-12-31" in _reason(dead)
        (line,) = [line for line in logs if line["event"] == "events_dead_lettered"]
        assert line["event_ids"] == [bad.event_id]
        assert line["message_id"] == mixed["messageId"]


class RefusingStore:
    """Raises as the store does when DynamoDB refuses a batch's items as invalid."""

    def __init__(self, refused: str) -> None:
        self.refused = refused

    def write(
        self,
        batches: Iterable[tuple[str, Sequence[analytics_pb2.AnalyticsEvent]]],
        *,
        ingested_ns: int,
    ) -> int:
        batches = list(batches)
        if any(batch_id == self.refused for batch_id, _ in batches):
            cause = client_error("ValidationException", "Item size exceeded", "PutItem")
            raise WriteError(f"PutItem failed: {cause}") from cause
        return sum(len(events) for _, events in batches)


class TestStore:
    def test_refused_record_is_dead_lettered_not_retried(self, harness: Harness) -> None:
        refused = record(1, _event(1))
        batch_id = decode_message(refused["body"], MESSAGE_ATTRIBUTES).batch_id
        handler = SqsBatchHandler(
            harness.sqs, RefusingStore(batch_id), harness.dlq_url, clock_ns=lambda: NOW_NS
        )
        response = handler.handle(sqs_event(refused, record(2, _event(2))))
        assert response == NO_FAILURES
        (dead,) = harness.dead
        assert "ValidationException" in _reason(dead)
        assert dead.body == refused["body"]

    def test_unavailable_store_is_retried_not_dead_lettered(self, harness: Harness) -> None:
        harness.ddb.journal.inject(
            "put_item", client_error("InternalServerError", "down", "PutItem")
        )
        rec = record(1, _event(1), group=None)
        assert harness.handler.handle(sqs_event(rec)) == _failed(rec)
        assert harness.dead == []

    def test_record_past_max_receive_count_is_dead_lettered(self, harness: Harness) -> None:
        over: dict[str, Any] = record(1, _event(1))
        over["attributes"]["ApproximateReceiveCount"] = str(MAX_RECEIVES + 1)
        within = record(2, _event(2), group="other")
        within["attributes"]["ApproximateReceiveCount"] = str(MAX_RECEIVES)
        assert harness.handler.handle(sqs_event(over, within)) == NO_FAILURES
        (dead,) = harness.dead
        assert f"received {MAX_RECEIVES + 1} times" in _reason(dead)
        assert harness.stored_ids == {_event(2).event_id}
