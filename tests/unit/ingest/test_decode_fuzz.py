"""Property-based tests (hypothesis) of SQS body decoding: whatever a message
holds, :func:`offpath.ingest.decode.decode` returns a verdict and never raises;
a poison verdict has a reason; every invalid event has a reason; and every
event it calls storable is taken by the real EventStore on a FakeDynamoDb that
also enforces DynamoDB's limits on what it is given (item size, key sizes,
numbers, map keys), with the consumer's own use of the event (its lag) too."""

from __future__ import annotations

import base64
import uuid
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Unpack

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from offpath.ingest import rollups
from offpath.ingest.decode import Decoded, Poison, decode
from offpath.ingest.store import EventStore, create_table_request, rollup_table_for
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, encode_batch
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb, item_size
from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        PutItemInputTypeDef,
        PutItemOutputTypeDef,
        TransactWriteItemsInputTypeDef,
        TransactWriteItemsOutputTypeDef,
    )

TABLE = "events"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Seconds around the edges that matter: 1970, today, 9999 and 10000, and anywhere.
SECONDS = st.one_of(
    st.sampled_from([0, 1, -1, 1_790_000_000, 253_402_300_799, 253_402_300_800]),
    st.integers(-62_135_596_800, 253_402_300_799 + 10**6),
    INT64,
)
NANOS = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1]), INT32)
TEXT = st.one_of(
    st.text(max_size=40),
    # Large strings: near and past DynamoDB's 400 KB item limit once stored.
    st.builds(
        lambda c, n: c * n, st.characters(codec="utf-8"), st.sampled_from([1_100, 150_000, 210_000])
    ),
)
EVENT_ID = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text(max_size=40),
)
SCORE = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _digits_ok(text: str) -> bool:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return False
    if not value.is_finite():
        return False
    if value == 0:
        return True
    digits = value.normalize().as_tuple().digits
    magnitude = abs(value)
    return len(digits) <= 38 and Decimal("1e-130") <= magnitude < Decimal("1e126")


def _check_value(value: Any, where: str) -> None:
    ((kind, raw),) = value.items()
    if kind == "N" and not _digits_ok(str(raw)):
        raise client_error("ValidationException", f"{where}: bad number {raw!r}", "Write")
    if kind == "M":
        for key, inner in raw.items():
            if not key:
                raise client_error("ValidationException", f"{where}: empty map key", "Write")
            _check_value(inner, where)
    if kind == "L":
        for inner in raw:
            _check_value(inner, where)


def _check_key(value: Any, limit: int, where: str) -> None:
    ((_, raw),) = value.items()
    size = len(raw.encode()) if isinstance(raw, str) else len(raw)
    if not 1 <= size <= limit:
        raise client_error("ValidationException", f"{where}: key of {size} bytes", "Write")


class StrictDynamoDb(FakeDynamoDb):
    """FakeDynamoDb that refuses, as DynamoDB does, items over 400 KB, keys out of
    size (partition 1-2048 bytes, sort 1-1024, index keys too), numbers DynamoDB
    cannot hold (38 digits, 1e-130 to 1e126, no NaN) and empty map keys."""

    def put_item(self, **kwargs: Unpack[PutItemInputTypeDef]) -> PutItemOutputTypeDef:
        item: Any = kwargs["Item"]
        if item_size(item) > 400 * 1024:
            raise client_error("ValidationException", "Item size has exceeded", "PutItem")
        _check_key(item["event_id"], 2048, "event_id")
        _check_key(item["bucket"], 2048, "bucket")
        _check_key(item["sk"], 1024, "sk")
        for name, value in item.items():
            _check_value(value, name)
        return super().put_item(**kwargs)

    def transact_write_items(
        self, **kwargs: Unpack[TransactWriteItemsInputTypeDef]
    ) -> TransactWriteItemsOutputTypeDef:
        for action in kwargs["TransactItems"]:
            update: Any = action.get("Update")
            if update is None:
                continue
            _check_key(update["Key"][rollups.ROLLUP_PARTITION], 2048, "pk")
            _check_key(update["Key"][rollups.ROLLUP_SORT], 1024, "sk")
            for value in update.get("ExpressionAttributeValues", {}).values():
                _check_value(value, "update")
        return super().transact_write_items(**kwargs)


def _store() -> EventStore:
    ddb = StrictDynamoDb()
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    return EventStore(ddb, TABLE, workers=1, sleep=lambda _: None)


def _settle(verdict: Decoded | Poison, events: int | None = None) -> None:
    """The outcome is right: poison with a reason, or storable events the store
    takes, beside invalid ones that each have a reason."""
    if isinstance(verdict, Poison):
        assert verdict.reason.strip()
        assert verdict.kind
        return
    assert verdict.valid
    assert all(reason.strip() for _, reason in verdict.invalid)
    if events is not None:
        assert len(verdict.valid) + len(verdict.invalid) == events
    now_ns = 1_790_000_000 * 10**9
    for event in verdict.valid:
        event.occurred_at.ToNanoseconds()  # the consumer's lag: must not raise
    written = _store().write([(verdict.batch.batch_id, verdict.valid)], ingested_ns=now_ns)
    assert written == len({event.event_id.lower() for event in verdict.valid})


SHORT = st.text(max_size=40)
# Per field: a value the store takes, and anything at all of the field's type.
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "event_id": (st.uuids().map(str), EVENT_ID),
    "service": (st.just("offpath.v1.QueryService"), TEXT),
    "method": (st.just("/offpath.v1.QueryService/Query"), TEXT),
    "query": (SHORT, TEXT),
    "token_count": (st.integers(0, 10_000), INT32),
    "status_code": (st.integers(0, 16), INT32),
    "attributes": (
        st.dictionaries(st.text(min_size=1, max_size=10), SHORT, max_size=4),
        st.dictionaries(st.text(max_size=10), TEXT, max_size=200),
    ),
    "occurred_s": (st.integers(1, 253_402_300_799), SECONDS),
    "occurred_nanos": (st.integers(0, 999_999_999), NANOS),
    "processing_s": (st.integers(0, 10**6), INT64),
    "processing_nanos": (st.integers(0, 999_999_999), NANOS),
    "skills": (
        st.lists(st.tuples(st.text(max_size=70), st.floats(0, 1, width=32)), max_size=5),
        st.lists(st.tuples(st.text(max_size=70), SCORE), max_size=120),
    ),
}


@st.composite
def events(draw: st.DrawFn) -> analytics_pb2.AnalyticsEvent:
    """An event whose fields are all storable but at most one, which is anything
    of its type: so that each check is reached alone, not hidden by another."""
    wild = draw(st.sampled_from([None, *FIELDS]))
    value = {name: draw(pair[name == wild]) for name, pair in FIELDS.items()}
    event = analytics_pb2.AnalyticsEvent(
        event_id=value["event_id"],
        service=value["service"],
        method=value["method"],
        query=value["query"],
        model=draw(st.text(max_size=100)),
        token_count=value["token_count"],
        status_code=value["status_code"],
        producer_id=draw(st.text(max_size=20)),
        attributes=value["attributes"],
    )
    if wild != "occurred_s" or draw(st.integers(0, 7)):  # sometimes no time at all
        event.occurred_at.seconds = value["occurred_s"]
        event.occurred_at.nanos = value["occurred_nanos"]
    if draw(st.booleans()) or wild in ("processing_s", "processing_nanos"):
        event.processing_time.seconds = value["processing_s"]
        event.processing_time.nanos = value["processing_nanos"]
    for name, score in value["skills"]:
        event.matched_skills.add(name=name, score=score)
    return event


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes(data: bytes) -> None:
    """Arbitrary bytes as a body, with our attributes."""
    _settle(decode(base64.b64encode(data).decode(), MESSAGE_ATTRIBUTES))


@FUZZ
@given(st.text(max_size=200), st.dictionaries(st.text(max_size=20), st.just({}), max_size=2))
def test_any_text_and_attributes(body: str, attributes: dict[str, Any]) -> None:
    """Arbitrary text bodies (mostly not base64) and attribute maps."""
    _settle(decode(body, attributes))
    _settle(decode(body, MESSAGE_ATTRIBUTES))


def _edge(change: Any) -> analytics_pb2.AnalyticsEvent:
    """A storable event with one field changed: the known edges, always tried."""
    event = analytics_pb2.AnalyticsEvent(
        event_id=str(uuid.UUID(int=7)),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query="q",
    )
    event.occurred_at.seconds = 1_790_000_000
    event.matched_skills.add(name="Kubernetes", score=0.5)
    change(event)
    return event


EDGES = [
    _edge(lambda e: setattr(e.occurred_at, "seconds", 253_402_300_800)),  # year 10000
    _edge(lambda e: setattr(e.occurred_at, "seconds", 253_402_300_799)),  # last second
    _edge(lambda e: setattr(e.occurred_at, "nanos", -1)),
    _edge(lambda e: setattr(e.processing_time, "seconds", -1)),
    _edge(lambda e: setattr(e.matched_skills[0], "score", float("nan"))),
    _edge(lambda e: setattr(e.matched_skills[0], "score", float("inf"))),
    _edge(lambda e: setattr(e.matched_skills[0], "score", 3.4e38)),
    _edge(lambda e: e.attributes.__setitem__("", "v")),
    _edge(lambda e: setattr(e, "query", "q" * 210_000)),
    _edge(lambda e: setattr(e, "method", "m" * 1_100)),
    _edge(lambda e: setattr(e, "token_count", -1)),
]


@FUZZ
@given(
    st.one_of(st.uuids().map(str), st.text(max_size=200)),
    st.lists(events(), max_size=4),
)
@example(batch_id=str(uuid.UUID(int=1)), batch_events=EDGES)
def test_structurally_valid_batches(batch_id: str, batch_events: list[Any]) -> None:
    """Batches of events with arbitrary field values: each event is either stored
    or dead-lettered with a reason, and what is stored the store takes."""
    batch = analytics_pb2.AnalyticsBatch(batch_id=batch_id, producer_id="p", events=batch_events)
    verdict = decode(encode_batch(batch), MESSAGE_ATTRIBUTES)
    _settle(verdict, len(batch_events))
    if isinstance(verdict, Decoded):
        assert list(verdict.batch.events) == batch_events


@FUZZ
@given(st.lists(events(), min_size=1, max_size=3), st.binary(min_size=1, max_size=64))
def test_batches_with_trailing_garbage(batch_events: list[Any], tail: bytes) -> None:
    """A good batch with bytes appended (truncated or corrupted in transit, or a
    newer schema's fields): still a verdict, and what is stored the store takes."""
    batch = analytics_pb2.AnalyticsBatch(batch_id=str(uuid.uuid4()), events=batch_events)
    _settle(decode(base64.b64encode(batch.SerializeToString() + tail).decode(), MESSAGE_ATTRIBUTES))
