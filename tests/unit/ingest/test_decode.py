"""Unit tests for offpath.ingest.decode: every kind of message gets its verdict
(poison with a precise reason, or storable events with the invalid ones split
off), never an exception."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from offpath.ingest import decode as decoding
from offpath.ingest.decode import (
    MAX_ITEM_BYTES,
    MAX_TIMESTAMP_SECONDS,
    Decoded,
    Poison,
    decode,
    event_problem,
    item_bytes_bound,
)
from offpath.ingest.store import EventStore
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, VERSION_ATTRIBUTE, encode_batch
from offpath.testing.dynamodb import item_size
from offpath.v1 import analytics_pb2, query_pb2

YEAR_10000_S = MAX_TIMESTAMP_SECONDS + 1
VERSION_2 = {"DataType": "String", "StringValue": "2"}


def event(i: int = 1, **fields: Any) -> analytics_pb2.AnalyticsEvent:
    e = analytics_pb2.AnalyticsEvent(
        event_id=f"0190a6f2-7a55-7cc1-9d2b-{i:012x}",
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=f"query {i}",
        model="template-v1",
        token_count=5,
        producer_id="producer-1",
    )
    e.occurred_at.FromNanoseconds(1_790_000_000_000_000_000 + i)
    e.processing_time.FromNanoseconds(2_000_000)
    e.matched_skills.add(name="Kubernetes", score=0.5)
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def body(*events: analytics_pb2.AnalyticsEvent, batch_id: str = "b-1") -> str:
    return encode_batch(
        analytics_pb2.AnalyticsBatch(batch_id=batch_id, producer_id="p", events=events)
    )


def raw_body(data: bytes) -> str:
    return base64.b64encode(data).decode()


def poison(text: str, attributes: Any = MESSAGE_ATTRIBUTES) -> Poison:
    verdict = decode(text, attributes)
    assert isinstance(verdict, Poison), verdict
    assert verdict.reason
    return verdict


def decoded(text: str) -> Decoded:
    verdict = decode(text, MESSAGE_ATTRIBUTES)
    assert isinstance(verdict, Decoded), verdict
    return verdict


class TestGood:
    def test_a_batch_decodes_with_every_event_valid(self) -> None:
        events = [event(1), event(2)]
        verdict = decoded(body(*events))
        assert verdict.batch.batch_id == "b-1"
        assert verdict.valid == events
        assert verdict.invalid == []

    def test_fields_of_a_newer_schema_are_kept(self) -> None:
        """Unknown field numbers (a newer producer's additions) are not poison, and
        they stay in the event (the store keeps them in its payload)."""
        e = event(1)
        extra = b"\xa2\x06\x03new"  # field 100, length-delimited
        text = raw_body(
            analytics_pb2.AnalyticsBatch(batch_id="b", events=[e]).SerializeToString() + extra
        )
        newer = analytics_pb2.AnalyticsEvent.FromString(e.SerializeToString() + extra)
        assert decoded(text).valid == [e]
        (stored,) = decoded(body(newer)).valid
        assert stored.SerializeToString().endswith(extra)

    def test_last_valid_second_is_storable(self) -> None:
        e = event(1)
        e.occurred_at.seconds = MAX_TIMESTAMP_SECONDS
        e.occurred_at.nanos = 999_999_999
        assert event_problem(e) is None


class TestPoison:
    @pytest.mark.parametrize(
        ("text", "attributes", "kind", "words"),
        [
            ("%%% not base64", MESSAGE_ATTRIBUTES, "undecodable", "not base64"),
            ("dGV4dMO", MESSAGE_ATTRIBUTES, "undecodable", "not base64"),
            ("héllo", MESSAGE_ATTRIBUTES, "undecodable", "not base64"),
            (raw_body(b"\xff\xff\xff"), MESSAGE_ATTRIBUTES, "undecodable", "not an AnalyticsBatch"),
            (body(event()), {}, "schema", "offpath-schema"),
            (
                body(event()),
                {**MESSAGE_ATTRIBUTES, VERSION_ATTRIBUTE: VERSION_2},
                "schema",
                "offpath-schema-version",
            ),
            ("", MESSAGE_ATTRIBUTES, "foreign", "no batch_id"),
            (body(), MESSAGE_ATTRIBUTES, "empty", "no events"),
            (body(event(), batch_id="x" * 129), MESSAGE_ATTRIBUTES, "foreign", "batch_id is 129"),
        ],
        ids=[
            "garbage",
            "bad-padding",
            "not-ascii",
            "not-protobuf",
            "no-schema",
            "other-version",
            "empty-body",
            "zero-events",
            "long-batch-id",
        ],
    )
    def test_reason_names_the_problem(
        self, text: str, attributes: Any, kind: str, words: str
    ) -> None:
        verdict = poison(text, attributes)
        assert verdict.kind == kind
        assert words in verdict.reason

    @pytest.mark.parametrize(
        ("message", "words"),
        [
            (query_pb2.QueryRequest(query="what is k8s", top_k=5), "field 2 (producer_id)"),
            (health_pb2.HealthCheckResponse(status=1), "field 1 (batch_id)"),
            (query_pb2.QueryResponse(answer="a", token_count=3), "field 4 (created_at)"),
        ],
        ids=["QueryRequest", "HealthCheckResponse", "QueryResponse"],
    )
    def test_another_message_type_is_foreign(self, message: Any, words: str) -> None:
        """Another protobuf message parses as a batch, but a field of the batch's own
        number holding the wrong kind of data gives it away."""
        verdict = poison(raw_body(message.SerializeToString()))
        assert verdict.kind == "foreign"
        assert "not an AnalyticsBatch" in verdict.reason
        assert words in verdict.reason

    def test_another_message_with_only_matching_fields_has_no_events(self) -> None:
        """A QueryRequest of a query alone reads as a batch id and nothing else."""
        verdict = poison(raw_body(query_pb2.QueryRequest(query="hello").SerializeToString()))
        assert verdict.kind == "empty"

    def test_no_storable_event_dead_letters_the_whole_message(self) -> None:
        bad = [event(1, event_id="nope"), event(2, token_count=-1)]
        verdict = poison(body(*bad))
        assert verdict.kind == "no_valid_events"
        assert "not a UUID" in verdict.reason
        assert "token_count -1" in verdict.reason
        assert verdict.event_ids == ("'nope'", bad[1].event_id)

    def test_reason_of_many_bad_events_is_bounded(self) -> None:
        verdict = poison(body(*[event(i, event_id=f"bad-{i}") for i in range(50)]))
        assert "and 45 more" in verdict.reason
        assert len(verdict.reason) < 1000


def _with(e: analytics_pb2.AnalyticsEvent, change: Any) -> analytics_pb2.AnalyticsEvent:
    change(e)
    return e


class TestInvalidEvents:
    @pytest.mark.parametrize(
        ("change", "words"),
        [
            (lambda e: setattr(e, "event_id", "not-a-uuid"), "not a UUID"),
            (lambda e: e.ClearField("occurred_at"), "has no occurred_at"),
            (lambda e: setattr(e.occurred_at, "seconds", YEAR_10000_S), "after 9999-12-31"),
            (lambda e: setattr(e.occurred_at, "seconds", -86400), "before 1970"),
            (lambda e: setattr(e.occurred_at, "nanos", -1), "nanos -1"),
            (lambda e: setattr(e.occurred_at, "nanos", 1_000_000_000), "nanos 1000000000"),
            (lambda e: setattr(e.processing_time, "seconds", -3), "negative"),
            (lambda e: setattr(e.processing_time, "seconds", 10**15), "Duration's range"),
            (lambda e: setattr(e, "token_count", -7), "token_count -7"),
            (lambda e: setattr(e, "status_code", -2), "status_code -2"),
            (lambda e: setattr(e.matched_skills[0], "score", float("nan")), "finite"),
            (lambda e: setattr(e.matched_skills[0], "score", float("inf")), "finite"),
            (lambda e: setattr(e.matched_skills[0], "score", 3e38), "finite"),
            (lambda e: [e.matched_skills.add(name=str(i)) for i in range(100)], "101 matched"),
            (lambda e: e.attributes.__setitem__("", "v"), "empty key"),
            (lambda e: setattr(e, "query", "q" * 300_000), "item limit"),
            (lambda e: setattr(e, "method", "/" + "m" * 2000), "rollup sort key"),
        ],
        ids=[
            "event-id",
            "no-time",
            "year-10000",
            "before-1970",
            "negative-nanos",
            "nanos-over",
            "negative-duration",
            "huge-duration",
            "negative-tokens",
            "negative-status",
            "nan-score",
            "inf-score",
            "huge-score",
            "many-skills",
            "empty-attribute-key",
            "oversize",
            "long-method",
        ],
    )
    def test_split_off_with_reason_beside_a_good_event(self, change: Any, words: str) -> None:
        good = event(1)
        bad = _with(event(2), change)
        verdict = decoded(body(good, bad))
        assert verdict.valid == [good]
        ((split, reason),) = verdict.invalid
        assert split == bad
        assert words in reason

    def test_event_of_another_type_inside_a_batch(self) -> None:
        """An event whose bytes are some other message (a field of its own number with
        the wrong wire type) is split off."""
        foreign = query_pb2.QueryResponse(answer=event(9).event_id, token_count=4)
        as_event = analytics_pb2.AnalyticsEvent.FromString(foreign.SerializeToString())
        verdict = decoded(body(event(1), as_event))
        assert verdict.valid == [event(1)]
        ((_, reason),) = verdict.invalid
        assert "is not an AnalyticsEvent: field 4 (method)" in reason

    def test_reasons_never_carry_the_query_text(self) -> None:
        secret = "my secret query"
        bad = event(2, query=secret, token_count=-1)
        verdict = decoded(body(event(1), bad))
        ((_, reason),) = verdict.invalid
        assert secret not in reason


class TestItemBound:
    @pytest.mark.parametrize("skills", [0, 1, 100])
    @pytest.mark.parametrize("attributes", [0, 1, 500])
    @pytest.mark.parametrize("text", [0, 100, 50_000])
    def test_bounds_the_stores_item(self, skills: int, attributes: int, text: int) -> None:
        """The bound is at least the size of the item the store really builds (as
        DynamoDB counts it), for many shapes of event."""
        e = event(3, query="é" * text, model="m" * 64, producer_id="p" * 100)
        del e.matched_skills[:]
        for i in range(skills):
            e.matched_skills.add(name=f"skill-{i}", score=-1e9 + i)
        for i in range(attributes):
            e.attributes[f"k{i}"] = ""
        store = EventStore(None, "t")  # type: ignore[arg-type]
        item = store._item(e, batch_id="x" * 128, ingested_ns=2**62)
        item["claimed_by"] = {"S": "x" * 128}
        assert item_size(item) <= item_bytes_bound(e)
        assert item_bytes_bound(e) < MAX_ITEM_BYTES


def test_decode_is_never_raised_through() -> None:
    """decode's module keeps its promise for an attribute map of the wrong shape."""
    verdict = decoding.decode(body(event()), {"offpath-schema": "not a mapping"})
    assert isinstance(verdict, Poison)
