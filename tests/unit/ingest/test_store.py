"""Unit tests for offpath.ingest.store: the table schema it owns, and EventStore over the
shared in-memory FakeDynamoDb (batch writes and their retries, the item format read back
from the fake table, and time-ordered paging over the sharded time index)."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from offpath.ingest import rollups
from offpath.ingest.store import (
    CLAIM_ATTRIBUTE,
    TABLE_KEY,
    TIME_INDEX,
    TIME_PARTITION,
    TIME_SORT,
    TTL_ATTRIBUTE,
    EventStore,
    WriteError,
    create_table_request,
    iso_ns,
    rollup_table_for,
)
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.v1 import analytics_pb2

TABLE = "events"
NS = 1_000_000_000
DAY1 = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()) * NS
DAY2 = DAY1 + 86_400 * NS
HOUR = 3_600 * NS
INGESTED_NS = DAY2 + HOUR


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _event(event_id: str, occurred_ns: int, **fields: Any) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        producer_id="producer-1",
        **fields,
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    return event


def _ddb(*, page_items: int = 1_000) -> FakeDynamoDb:
    ddb = FakeDynamoDb(page_items=page_items)
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    return ddb


def _store(ddb: FakeDynamoDb, **kwargs: Any) -> tuple[EventStore, list[float]]:
    """A store whose backoff always waits its ceiling, recording the waits instead."""
    sleeps: list[float] = []
    store = EventStore(ddb, TABLE, sleep=sleeps.append, rng=lambda: 1.0, **kwargs)
    return store, sleeps


def _write(
    store: EventStore,
    events: Sequence[analytics_pb2.AnalyticsEvent],
    *,
    batch_id: str = "b-1",
    ingested_ns: int = INGESTED_NS,
) -> int:
    return store.write([(batch_id, events)], ingested_ns=ingested_ns)


def _item(ddb: FakeDynamoDb, event_id: str) -> dict[str, Any]:
    """The stored item of ``event_id``, read from the fake table itself."""
    (item,) = [i for i in ddb.items(TABLE) if i[TABLE_KEY]["S"] == event_id]
    return item


class TestSchema:
    def test_create_table_request_defines_the_keys_the_store_uses(self) -> None:
        """The table is keyed by event id and its time index by bucket then sort key, each
        key attribute declared once, billed on demand."""
        request = create_table_request("t1")
        assert request["TableName"] == "t1"
        assert request["BillingMode"] == "PAY_PER_REQUEST"
        assert request["KeySchema"] == [{"AttributeName": TABLE_KEY, "KeyType": "HASH"}]
        (index,) = request.get("GlobalSecondaryIndexes", [])
        assert index["IndexName"] == TIME_INDEX
        assert index["KeySchema"] == [
            {"AttributeName": TIME_PARTITION, "KeyType": "HASH"},
            {"AttributeName": TIME_SORT, "KeyType": "RANGE"},
        ]
        assert index.get("Projection") == {"ProjectionType": "ALL"}
        defined = {
            (d["AttributeName"], d["AttributeType"]) for d in request["AttributeDefinitions"]
        }
        assert defined == {(TABLE_KEY, "S"), (TIME_PARTITION, "S"), (TIME_SORT, "S")}

    def test_the_store_works_on_a_table_made_from_the_request(self) -> None:
        """Items written by the store are found again through the time index the request
        creates, so schema and item format agree."""
        ddb = _ddb()
        store, _ = _store(ddb)
        event = _event(_uuid(random.Random(0)), DAY1 + HOUR)
        _write(store, [event])
        page, _ = store.list(DAY1, DAY2, page_size=10)
        assert [stored.event for stored in page] == [event]
        assert {q["IndexName"] for q in ddb.journal.of("query")} == {TIME_INDEX}


class TestWrite:
    def test_each_event_is_a_conditional_put_claimed_by_its_message(self) -> None:
        """Every event is one PutItem that only a new event or the same message may
        write, carrying the message's id as claimed_by and batch_id."""
        rng = random.Random(1)
        ddb = _ddb()
        store, _ = _store(ddb)
        events = [_event(_uuid(rng), DAY1 + i) for i in range(5)]
        assert _write(store, events, batch_id="b-7") == 5
        puts = ddb.journal.of("put_item")
        assert sorted(p["Item"][TABLE_KEY]["S"] for p in puts) == sorted(e.event_id for e in events)
        for put in puts:
            assert put["ConditionExpression"] == "attribute_not_exists(#k) OR #c = :m"
            assert put["ExpressionAttributeValues"] == {":m": {"S": "b-7"}}
            assert put["Item"][CLAIM_ATTRIBUTE] == {"S": "b-7"}
            assert put["Item"]["batch_id"] == {"S": "b-7"}

    def test_one_rollup_transaction_per_message_with_its_marker(self) -> None:
        """Each message's rollups go out as one TransactWriteItems whose first item
        is the message's marker, conditioned on not existing."""
        rng = random.Random(2)
        ddb = _ddb()
        store, _ = _store(ddb)
        first = [_event(_uuid(rng), DAY1 + i, query="q") for i in range(3)]
        second = [_event(_uuid(rng), DAY1 + 10 + i) for i in range(2)]
        assert store.write([("b-1", first), ("b-2", second)], ingested_ns=INGESTED_NS) == 5
        calls = ddb.journal.of("transact_write_items")
        assert len(calls) == 2
        for call, message in zip(calls, ("b-1", "b-2"), strict=True):
            marker = call["TransactItems"][0]["Update"]
            assert marker["Key"][rollups.ROLLUP_PARTITION] == {"S": f"m#{message}"}
            assert marker["ConditionExpression"] == "attribute_not_exists(#p)"
        assert store.summary(DAY1, DAY2).event_count == 5

    def test_redelivered_message_adds_nothing(self) -> None:
        """Writing the same message again rewrites its events but its rollup
        transaction is cancelled by its marker: every rollup item is unchanged."""
        rng = random.Random(3)
        ddb = _ddb()
        store, _ = _store(ddb)
        events = [_event(_uuid(rng), DAY1 + i, status_code=5, query="Hi") for i in range(4)]
        _write(store, events)
        before = ddb.items(rollup_table_for(TABLE))
        _write(store, events)
        assert ddb.items(rollup_table_for(TABLE)) == before
        assert store.stats.replays == 1
        assert store.summary(DAY1, DAY2).errors_by_code == [(5, 4)]

    def test_resent_events_in_a_new_batch_add_nothing(self) -> None:
        """Events already claimed by another message are left out of a new
        message's rollups; only the new events count."""
        rng = random.Random(4)
        ddb = _ddb()
        store, _ = _store(ddb)
        events = [_event(_uuid(rng), DAY1 + i) for i in range(6)]
        _write(store, events[:4], batch_id="b-1")
        _write(store, events[2:], batch_id="b-2")
        assert store.stats.duplicates == 2
        assert store.summary(DAY1, DAY2).event_count == 6

    def test_duplicate_event_ids_count_once(self) -> None:
        """An event id twice in one call is stored and counted once."""
        rng = random.Random(5)
        ddb = _ddb()
        store, _ = _store(ddb)
        same, other = _uuid(rng), _uuid(rng)
        batches = [
            ("b-1", [_event(same, DAY1, query="first"), _event(other, DAY1)]),
            ("b-2", [_event(same, DAY1, query="first")]),
        ]
        assert store.write(batches, ingested_ns=INGESTED_NS) == 2
        assert len(ddb.items(TABLE)) == 2
        assert store.summary(DAY1, DAY2).event_count == 2

    @pytest.mark.parametrize(
        ("operation", "cause"),
        [
            ("put_item", RuntimeError("connection reset")),
            ("put_item", client_error("ProvisionedThroughputExceededException", "slow", "PutItem")),
            ("transact_write_items", RuntimeError("connection reset")),
            (
                "transact_write_items",
                client_error("ValidationException", "bad", "TransactWriteItems"),
            ),
        ],
        ids=["put-connection", "put-throttled", "rollup-connection", "rollup-invalid"],
    )
    def test_failures_become_write_errors(self, operation: str, cause: Exception) -> None:
        """Any failure of a put or of the rollup transaction is raised as WriteError,
        with the cause kept."""
        ddb = _ddb()
        ddb.journal.inject(operation, cause)
        store, _ = _store(ddb)
        with pytest.raises(WriteError) as info:
            _write(store, [_event(_uuid(random.Random(6)), DAY1)])
        assert info.value.__cause__ is cause

    def test_transaction_conflicts_are_retried_with_backoff(self) -> None:
        """A transaction cancelled by a conflicting one is retried after a
        full-jitter backoff, and the rollups count once."""
        ddb = _ddb()
        conflict = client_error("TransactionCanceledException", "conflict", "TransactWriteItems")
        conflict.response["CancellationReasons"] = [
            {"Code": "None"},
            {"Code": "TransactionConflict"},
        ]
        ddb.journal.inject("transact_write_items", conflict)
        store, sleeps = _store(ddb)
        _write(store, [_event(_uuid(random.Random(7)), DAY1)])
        assert sleeps == pytest.approx([0.05])
        assert store.summary(DAY1, DAY2).event_count == 1

    def test_write_units_per_event_at_fifty_events_a_message(self) -> None:
        """At 50 realistic events a message, events plus rollups cost at most 1.5
        write units per event (DynamoDB's size rules, as the fake bills them)."""
        rng = random.Random(8)
        ddb = _ddb()
        store, _ = _store(ddb)
        queries = ["what kubernetes experience do you have?", "python and go?", "aws lambda"]
        events = []
        for i in range(1000):
            event = _event(
                _uuid(rng),
                DAY1 + i,
                query=f"{queries[i % 3]} {i % 40}",
                model="template-v1",
                token_count=42,
                status_code=0 if i % 20 else 14,
            )
            event.processing_time.FromNanoseconds(11_000_000 + i * 10_000)
            for name in ("Kubernetes", "Python", "AWS"):
                event.matched_skills.add(name=name, score=0.5)
            events.append(event)
        for start in range(0, 1000, 50):
            _write(store, events[start : start + 50], batch_id=f"b-{start}")
        assert store.stats.write_units / 1000 <= 1.5

    @pytest.mark.parametrize(
        "batches",
        [[], [("b-1", [])], [("b-1", []), ("b-2", [])]],
        ids=["no-batches", "one-empty", "two-empty"],
    )
    def test_nothing_to_write(
        self, batches: list[tuple[str, list[analytics_pb2.AnalyticsEvent]]]
    ) -> None:
        """A write with no events makes no call and reports 0."""
        ddb = _ddb()
        store, _ = _store(ddb)
        assert store.write(batches, ingested_ns=INGESTED_NS) == 0
        assert ddb.journal.of("put_item") == []
        assert ddb.journal.of("transact_write_items") == []


class TestItem:
    def test_fields(self) -> None:
        """The stored item carries every event field readably, the payload, batch and ingest
        time, and the key attributes the schema names."""
        ddb = _ddb()
        store, _ = _store(ddb, retention_days=7)
        event = _event(
            "0190a6f2-7a55-7cc1-9d2b-1a2b3c4d5e6f",
            DAY1 + 5 * HOUR + 123_456_789,
            query="k8s?",
            model="tiny",
            token_count=12,
            status_code=3,
        )
        event.processing_time.FromNanoseconds(1_234_567_890)
        event.matched_skills.add(name="Kubernetes", score=0.75)
        event.attributes["region"] = "eu"
        _write(store, [event], batch_id="batch-9", ingested_ns=DAY1 + 6 * HOUR + 5)
        item = _item(ddb, event.event_id)
        assert item[TABLE_KEY] == {"S": event.event_id}
        assert item[TIME_PARTITION] == {"S": f"2026-11-27#{0x5E6F % 4}"}
        assert item[TIME_SORT] == {"S": f"2026-11-27T05:00:00.123456789Z#{event.event_id}"}
        assert item["occurred_at"] == {"S": "2026-11-27T05:00:00.123456789Z"}
        assert item["ingested_at"] == {"S": "2026-11-27T06:00:00.000000005Z"}
        assert item["service"] == {"S": "offpath.v1.QueryService"}
        assert item["method"] == {"S": "/offpath.v1.QueryService/Query"}
        assert item["query"] == {"S": "k8s?"}
        assert item["model"] == {"S": "tiny"}
        assert item["processing_ms"] == {"N": "1234.568"}
        assert item["token_count"] == {"N": "12"}
        assert item["status_code"] == {"N": "3"}
        assert item["skills"] == {
            "L": [{"M": {"name": {"S": "Kubernetes"}, "score": {"N": "0.750000"}}}]
        }
        assert item["attributes"] == {"M": {"region": {"S": "eu"}}}
        assert item["batch_id"] == {"S": "batch-9"}
        assert item["producer_id"] == {"S": "producer-1"}
        assert item[TTL_ATTRIBUTE] == {"N": str((DAY1 + 5 * HOUR) // NS + 7 * 86_400)}
        assert analytics_pb2.AnalyticsEvent.FromString(item["payload"]["B"]) == event

    def test_payload_keeps_unknown_fields(self) -> None:
        """The payload is the event's exact bytes, so fields this version does not know
        survive a round trip through the table."""
        ddb = _ddb()
        store, _ = _store(ddb)
        event = _event(_uuid(random.Random(13)), DAY1)
        # Field 999, wire type 2 (length-delimited), 3 bytes: a field from a newer schema.
        unknown = b"\xba\x3e\x03abc"
        event.MergeFromString(unknown)
        _write(store, [event])
        payload = _item(ddb, event.event_id)["payload"]["B"]
        assert payload.endswith(unknown)
        stored = store.get(event.event_id)
        assert stored is not None
        assert stored.event.SerializeToString() == event.SerializeToString()

    @pytest.mark.parametrize("shards", [1, 4, 7])
    def test_bucket_is_utc_day_and_shard(self, shards: int) -> None:
        """The time partition is the UTC day of occurrence and a shard from the id's tail."""
        ddb = _ddb()
        store, _ = _store(ddb, shards=shards)
        rng = random.Random(shards)
        for occurred in (DAY1, DAY2 - 1, DAY2, DAY1 + 13 * HOUR):
            event_id = _uuid(rng)
            _write(store, [_event(event_id, occurred)])
            bucket = _item(ddb, event_id)[TIME_PARTITION]["S"]
            day = datetime.fromtimestamp(occurred // NS, UTC).strftime("%Y-%m-%d")
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}#\d+", bucket)
            assert bucket == f"{day}#{int(event_id[-4:], 16) % shards}"
            assert bucket == store.bucket(event_id, occurred)

    def test_bucket_spreads_over_every_shard(self) -> None:
        """Random ids land in every shard, so one day's writes do not share a partition."""
        ddb = _ddb()
        store, _ = _store(ddb, shards=4)
        rng = random.Random(8)
        _write(store, [_event(_uuid(rng), DAY1 + i) for i in range(200)])
        buckets = {item[TIME_PARTITION]["S"] for item in ddb.items(TABLE)}
        assert buckets == {f"2026-11-27#{shard}" for shard in range(4)}

    def test_sort_key_orders_by_time_then_id(self) -> None:
        """Sort keys compare as text in the same order as (occurred_at, event_id)."""
        ddb = _ddb()
        store, _ = _store(ddb)
        rng = random.Random(9)
        times = [DAY1 - 1, DAY1, DAY1 + 9, DAY1 + 10, DAY1 + NS - 1, DAY1 + NS, DAY2 + 1]
        times += [0, 999_999_999, 10 * NS, 4_102_444_800 * NS]  # 1970 to 2100
        events = [_event(_uuid(rng), t) for t in times for _ in range(2)]
        shuffled = list(events)
        rng.shuffle(shuffled)
        _write(store, shuffled)
        by_key = sorted(ddb.items(TABLE), key=lambda item: item[TIME_SORT]["S"])
        by_time = sorted(events, key=lambda e: (e.occurred_at.ToNanoseconds(), e.event_id))
        assert [item[TABLE_KEY]["S"] for item in by_key] == [e.event_id for e in by_time]

    @pytest.mark.parametrize("days", [1, 30, 365])
    def test_expires_at_is_occurred_plus_retention(self, days: int) -> None:
        """The TTL attribute is the occurrence time in epoch seconds plus the retention."""
        ddb = _ddb()
        store, _ = _store(ddb, retention_days=days)
        event = _event(_uuid(random.Random(0)), DAY1 + 999)
        _write(store, [event])
        assert _item(ddb, event.event_id)[TTL_ATTRIBUTE] == {"N": str(DAY1 // NS + days * 86_400)}


class TestGet:
    def test_reads_back_what_was_written(self) -> None:
        """get returns the event, its batch and its ingest time exactly, read consistently;
        unknown ids give None."""
        ddb = _ddb()
        store, _ = _store(ddb)
        event = _event(_uuid(random.Random(10)), DAY1 + 7, query="hello")
        _write(store, [event], batch_id="batch-1", ingested_ns=DAY2 + 123)
        stored = store.get(event.event_id)
        assert stored is not None
        assert stored.event == event
        assert stored.batch_id == "batch-1"
        assert stored.ingested_at_ns == DAY2 + 123
        assert store.get(_uuid(random.Random(11))) is None
        assert all(
            call["ConsistentRead"]
            for call in ddb.journal.of("get_item")
            if call["TableName"] == TABLE
        )

    def test_upper_case_ids_are_keyed_in_canonical_form(self) -> None:
        """An event whose producer wrote its UUID in upper case is stored under the
        lower-case id (the form GetEvent looks up), with its payload unchanged."""
        ddb = _ddb()
        store, _ = _store(ddb)
        event = _event(_uuid(random.Random(12)).upper(), DAY1 + 9)
        _write(store, [event], batch_id="batch-2", ingested_ns=DAY2)
        stored = store.get(event.event_id.lower())
        assert stored is not None
        assert stored.event.event_id == event.event_id
        assert [item["event_id"]["S"] for item in ddb.items(TABLE)] == [event.event_id.lower()]

    def test_failures_are_raised(self) -> None:
        """A failing GetItem is not mistaken for a missing event."""
        ddb = _ddb()
        ddb.journal.inject("get_item", client_error("InternalServerError", "no", "GetItem"))
        store, _ = _store(ddb)
        with pytest.raises(ClientError, match="InternalServerError"):
            store.get(_uuid(random.Random(14)))


def _populate(
    ddb: FakeDynamoDb, store: EventStore, count: int, seed: int
) -> list[analytics_pb2.AnalyticsEvent]:
    """``count`` events from 20:00 on day 1 to 04:00 on day 2, some at identical times."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        occurred = DAY2 - 4 * HOUR + rng.randrange(8 * HOUR)
        events.append(_event(_uuid(rng), occurred))
        if i % 10 == 0:
            events.append(_event(_uuid(rng), occurred))  # a tie, broken by event id
    _write(store, events)
    assert len(ddb.items(TABLE)) == len(events)
    return events


def _ordered(events: Sequence[analytics_pb2.AnalyticsEvent], newest_first: bool) -> list[str]:
    key = sorted(events, key=lambda e: (e.occurred_at.ToNanoseconds(), e.event_id))
    ids = [e.event_id for e in key]
    return ids[::-1] if newest_first else ids


def _page_all(
    store: EventStore, start: int, end: int, page_size: int, newest_first: bool
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page, cursor = store.list(
            start, end, page_size=page_size, newest_first=newest_first, cursor=cursor
        )
        pages.append([stored.event.event_id for stored in page])
        if cursor is None:
            return pages
        assert len(pages) < 1_000, "paging does not end"


class TestList:
    @pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
    @pytest.mark.parametrize("page_size", [1, 2, 5, 7, 100])
    @pytest.mark.parametrize("page_items", [2, 1_000], ids=["small-ddb-pages", "one-ddb-page"])
    @pytest.mark.parametrize("shards", [1, 4])
    def test_pages_cover_every_event_once_in_order(
        self, newest_first: bool, page_size: int, page_items: int, shards: int
    ) -> None:
        """Following the cursor from the first page to the last yields every event in the
        range exactly once, in time order, across two days and every shard."""
        ddb = _ddb(page_items=page_items)
        store, _ = _store(ddb, shards=shards)
        events = _populate(ddb, store, 40, seed=page_size)
        assert len({item[TIME_PARTITION]["S"] for item in ddb.items(TABLE)}) == 2 * shards
        pages = _page_all(store, DAY1, DAY2 + 86_400 * NS, page_size, newest_first)
        assert [e for page in pages for e in page] == _ordered(events, newest_first)
        assert all(len(page) == page_size for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= page_size

    @pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
    def test_range_is_half_open(self, newest_first: bool) -> None:
        """Only events with start <= occurred_at < end are listed, across the day boundary."""
        ddb = _ddb(page_items=3)
        store, _ = _store(ddb, shards=3)
        events = _populate(ddb, store, 30, seed=21)
        times = sorted({e.occurred_at.ToNanoseconds() for e in events})
        start, end = times[5], times[-5]  # both are event times: bounds are exact
        assert start < DAY2 <= end
        inside = [e for e in events if start <= e.occurred_at.ToNanoseconds() < end]
        pages = _page_all(store, start, end, 4, newest_first)
        assert [e for page in pages for e in page] == _ordered(inside, newest_first)

    def test_exact_page_leaves_no_dangling_cursor(self) -> None:
        """When the events fill the last page exactly, no cursor to an empty page is given."""
        ddb = _ddb()
        store, _ = _store(ddb)
        rng = random.Random(30)
        _write(store, [_event(_uuid(rng), DAY1 + i * HOUR) for i in range(6)])
        page, cursor = store.list(DAY1, DAY2, page_size=6)
        assert len(page) == 6
        assert cursor is None
        page, cursor = store.list(DAY1, DAY2, page_size=3)
        assert cursor is not None

    def test_pages_carry_batch_and_ingest_time(self) -> None:
        """Listed events come back with the batch id and ingest time they were written with."""
        ddb = _ddb()
        store, _ = _store(ddb)
        event = _event(_uuid(random.Random(31)), DAY1 + HOUR)
        _write(store, [event], batch_id="batch-7", ingested_ns=DAY1 + 2 * HOUR)
        (stored,), _ = store.list(DAY1, DAY2, page_size=5)
        assert (stored.event, stored.batch_id, stored.ingested_at_ns) == (
            event,
            "batch-7",
            DAY1 + 2 * HOUR,
        )

    def test_empty_range(self) -> None:
        """A range with no events gives an empty page and no cursor."""
        ddb = _ddb()
        store, _ = _store(ddb)
        assert store.list(DAY1, DAY2, page_size=10) == ([], None)

    def test_queries_only_the_days_in_range(self) -> None:
        """Each UTC day the range touches is queried once per shard, no other day."""
        ddb = _ddb()
        store, _ = _store(ddb, shards=2)
        store.list(DAY1 + HOUR, DAY2 + HOUR, page_size=10)
        buckets = sorted(q["ExpressionAttributeValues"][":p"]["S"] for q in ddb.journal.of("query"))
        assert buckets == ["2026-11-27#0", "2026-11-27#1", "2026-11-28#0", "2026-11-28#1"]


class TestSummary:
    def test_counts_errors_latency_and_skills(self) -> None:
        """Summary totals events, non-OK statuses, mean processing time and top skills over
        the range only, across DynamoDB pages."""
        ddb = _ddb(page_items=2)
        store, _ = _store(ddb)
        rng = random.Random(40)
        events = []
        for i in range(6):
            event = _event(_uuid(rng), DAY1 + i * HOUR, status_code=3 if i < 2 else 0)
            event.processing_time.FromNanoseconds((i + 1) * 1_000_000)
            event.matched_skills.add(name="Go" if i % 2 else "Rust", score=0.5)
            if i == 0:
                event.matched_skills.add(name="Go", score=0.4)
            events.append(event)
        events.append(_event(_uuid(rng), DAY2 + HOUR))  # outside the range
        _write(store, events)
        summary = store.summary(DAY1, DAY2)
        assert summary.event_count == 6
        assert summary.error_count == 2
        assert summary.mean_processing_ms == pytest.approx(3.5)
        assert summary.top_skills == [("Go", 4), ("Rust", 3)]

    def test_top_skills_are_at_most_ten_ties_by_name(self) -> None:
        """Only the ten most matched skills are reported, equal counts ordered by name."""
        ddb = _ddb()
        store, _ = _store(ddb)
        rng = random.Random(41)
        event = _event(_uuid(rng), DAY1 + HOUR)
        for name in "LKJIHGFEDCBA":
            event.matched_skills.add(name=name, score=0.5)
        _write(store, [event])
        summary = store.summary(DAY1, DAY2)
        assert summary.top_skills == [(name, 1) for name in "ABCDEFGHIJ"]

    def test_empty_range(self) -> None:
        """No events: zero counts and a mean of 0, not a division error."""
        store, _ = _store(_ddb())
        summary = store.summary(DAY1, DAY2)
        assert (summary.event_count, summary.error_count, summary.top_skills) == (0, 0, [])
        assert summary.mean_processing_ms == 0.0


def test_iso_ns_is_fixed_width() -> None:
    """iso_ns always renders nine fractional digits, so text order is time order."""
    assert iso_ns(DAY1) == "2026-11-27T00:00:00.000000000Z"
    assert iso_ns(DAY1 + 1) == "2026-11-27T00:00:00.000000001Z"
    assert iso_ns(0) == "1970-01-01T00:00:00.000000000Z"
