"""Unit tests for offpath.ingest.store.EventStore over a stub DynamoDB client: batch writes,
item layout, and time-ordered paging over the sharded time index."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from offpath.ingest.store import EventStore, WriteError, iso_ns
from offpath.kit.bootstrap import TIME_INDEX
from offpath.v1 import analytics_pb2

TABLE = "events"
NS = 1_000_000_000
DAY1 = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()) * NS
DAY2 = DAY1 + 86_400 * NS
HOUR = 3_600 * NS


def _validation(message: str) -> ClientError:
    return ClientError({"Error": {"Code": "ValidationException", "Message": message}}, "Query")


class StubDynamoDb:
    """An in-memory table behind the three calls EventStore makes.

    ``batch_write_item`` stores items, except that it hands back as UnprocessedItems the
    last ``unprocessed[n]`` requests of its n-th call (``None`` entries: all of them).
    ``query`` evaluates the time index key condition (bucket equality, sk BETWEEN), honours
    ScanIndexForward, Limit and ExclusiveStartKey, and stops after ``page_cap`` items as
    DynamoDB's 1 MB page limit would, returning LastEvaluatedKey whenever it stopped early
    (even when nothing is left, as DynamoDB may). It rejects what DynamoDB rejects.
    """

    def __init__(self, *, page_cap: int = 1_000, unprocessed: Sequence[int | None] = ()) -> None:
        self.table: dict[str, dict[str, Any]] = {}
        self.page_cap = page_cap
        self.unprocessed = list(unprocessed)
        self.write_calls: list[list[dict[str, Any]]] = []
        self.queries: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        ((table, requests),) = kwargs["RequestItems"].items()
        assert table == TABLE
        assert 1 <= len(requests) <= 25, "BatchWriteItem takes 1 to 25 requests"
        keys = [r["PutRequest"]["Item"]["event_id"]["S"] for r in requests]
        assert len(set(keys)) == len(keys), "BatchWriteItem rejects duplicate keys"
        self.write_calls.append(requests)
        count = self.unprocessed.pop(0) if self.unprocessed else 0
        count = len(requests) if count is None else count
        done, left = requests[: len(requests) - count], requests[len(requests) - count :]
        for request in done:
            item = request["PutRequest"]["Item"]
            self.table[item["event_id"]["S"]] = item
        return {"UnprocessedItems": {TABLE: left} if left else {}}

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["TableName"] == TABLE
        item = self.table.get(kwargs["Key"]["event_id"]["S"])
        return {} if item is None else {"Item": item}

    def query(self, **kwargs: Any) -> dict[str, Any]:
        self.queries.append(dict(kwargs))
        assert kwargs["TableName"] == TABLE
        assert kwargs["IndexName"] == TIME_INDEX
        assert kwargs["KeyConditionExpression"] == "#p = :p AND #s BETWEEN :lo AND :hi"
        names, values = kwargs["ExpressionAttributeNames"], kwargs["ExpressionAttributeValues"]
        part, sort = names["#p"], names["#s"]
        bucket, low, high = values[":p"]["S"], values[":lo"]["S"], values[":hi"]["S"]
        if low > high:
            raise _validation("BETWEEN requires the upper bound >= the lower bound")
        limit = kwargs.get("Limit")
        if limit is not None and limit < 1:
            raise _validation("Limit must be at least 1")
        forward = kwargs.get("ScanIndexForward", True)
        matches = sorted(
            (
                item
                for item in self.table.values()
                if item[part]["S"] == bucket and low <= item[sort]["S"] <= high
            ),
            key=lambda item: item[sort]["S"],
            reverse=not forward,
        )
        start = kwargs.get("ExclusiveStartKey")
        if start is not None:
            after = start[sort]["S"]
            assert start[part]["S"] == bucket
            matches = [
                m for m in matches if (m[sort]["S"] > after if forward else m[sort]["S"] < after)
            ]
        cap = min(limit or self.page_cap, self.page_cap)
        page = matches[:cap]
        response: dict[str, Any] = {"Items": page, "Count": len(page)}
        if len(page) == cap:
            last = page[-1]
            response["LastEvaluatedKey"] = {k: last[k] for k in ("event_id", part, sort)}
        return response


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


def _store(stub: StubDynamoDb, **kwargs: Any) -> tuple[EventStore, list[float]]:
    sleeps: list[float] = []
    client: Any = stub
    store = EventStore(client, TABLE, sleep=sleeps.append, rng=lambda: 1.0, **kwargs)
    return store, sleeps


def _items(
    store: EventStore, events: Sequence[analytics_pb2.AnalyticsEvent]
) -> list[dict[str, Any]]:
    return [store.item(e, batch_id="b-1", ingested_ns=DAY2 + HOUR) for e in events]


class TestWrite:
    def test_retries_unprocessed_items_until_done(self) -> None:
        """Unprocessed items are resent (only they) after a backoff until none are left."""
        rng = random.Random(1)
        stub = StubDynamoDb(unprocessed=[2, 1])
        store, sleeps = _store(stub)
        items = _items(store, [_event(_uuid(rng), DAY1 + i) for i in range(5)])
        assert store.write(items) == 5
        assert [len(call) for call in stub.write_calls] == [5, 2, 1]
        assert stub.write_calls[1] == stub.write_calls[0][3:]
        assert stub.write_calls[2] == stub.write_calls[1][1:]
        assert len(stub.table) == 5
        assert sleeps == pytest.approx([0.05, 0.1])

    def test_raises_when_unprocessed_never_clear(self) -> None:
        """Items DynamoDB keeps refusing end in WriteError after a bounded number of tries."""
        stub = StubDynamoDb(unprocessed=[None] * 100)
        store, sleeps = _store(stub)
        items = _items(store, [_event(_uuid(random.Random(2)), DAY1)])
        with pytest.raises(WriteError, match="unprocessed"):
            store.write(items)
        assert len(stub.write_calls) == 8
        assert all(delay <= 2.0 for delay in sleeps)

    def test_no_wait_after_the_last_attempt(self) -> None:
        """Giving up does not first wait out a backoff no attempt will follow."""
        stub = StubDynamoDb(unprocessed=[None] * 100)
        store, sleeps = _store(stub)
        with pytest.raises(WriteError):
            store.write(_items(store, [_event(_uuid(random.Random(2)), DAY1)]))
        assert len(sleeps) == len(stub.write_calls) - 1

    def test_client_errors_become_write_errors(self) -> None:
        """Any failure of the call itself is raised as WriteError, with the cause kept."""
        stub = StubDynamoDb()
        cause = RuntimeError("connection reset")
        stub.error = cause
        store, _ = _store(stub)
        with pytest.raises(WriteError) as info:
            store.write(_items(store, [_event(_uuid(random.Random(3)), DAY1)]))
        assert info.value.__cause__ is cause

    def test_chunks_of_at_most_25(self) -> None:
        """60 items go out as 25 + 25 + 10, each exactly once."""
        rng = random.Random(4)
        stub = StubDynamoDb()
        store, _ = _store(stub)
        items = _items(store, [_event(_uuid(rng), DAY1 + i) for i in range(60)])
        assert store.write(items) == 60
        assert [len(call) for call in stub.write_calls] == [25, 25, 10]
        written = [r["PutRequest"]["Item"] for call in stub.write_calls for r in call]
        assert written == items

    def test_duplicate_event_ids_collapse_to_the_last(self) -> None:
        """Duplicate keys (BatchWriteItem would reject them) are sent once, the last wins."""
        rng = random.Random(5)
        stub = StubDynamoDb()
        store, _ = _store(stub)
        same, other = _uuid(rng), _uuid(rng)
        events = [
            _event(same, DAY1, query="first"),
            _event(other, DAY1),
            _event(same, DAY1, query="last"),
        ]
        assert store.write(_items(store, events)) == 2
        assert len(stub.write_calls[0]) == 2
        assert stub.table[same]["query"] == {"S": "last"}

    def test_nothing_to_write(self) -> None:
        """An empty write makes no call."""
        stub = StubDynamoDb()
        store, _ = _store(stub)
        assert store.write([]) == 0
        assert stub.write_calls == []


class TestItem:
    def test_fields(self) -> None:
        """The item carries every event field readably, the payload, batch and ingest time."""
        store, _ = _store(StubDynamoDb(), retention_days=7)
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
        item = store.item(event, batch_id="batch-9", ingested_ns=DAY1 + 6 * HOUR + 5)
        assert item["event_id"] == {"S": event.event_id}
        assert item["occurred_at"] == {"S": "2026-11-27T05:00:00.123456789Z"}
        assert item["ingested_at"] == {"S": "2026-11-27T06:00:00.000000005Z"}
        assert item["sk"] == {"S": f"2026-11-27T05:00:00.123456789Z#{event.event_id}"}
        assert item["processing_ms"] == {"N": "1234.568"}
        assert item["token_count"] == {"N": "12"}
        assert item["status_code"] == {"N": "3"}
        assert item["skills"] == {
            "L": [{"M": {"name": {"S": "Kubernetes"}, "score": {"N": "0.750000"}}}]
        }
        assert item["attributes"] == {"M": {"region": {"S": "eu"}}}
        assert item["batch_id"] == {"S": "batch-9"}
        assert item["producer_id"] == {"S": "producer-1"}
        assert analytics_pb2.AnalyticsEvent.FromString(item["payload"]["B"]) == event

    @pytest.mark.parametrize("shards", [1, 4, 7])
    def test_bucket_is_utc_day_and_shard(self, shards: int) -> None:
        """The time partition is the UTC day of occurrence and a shard from the id's tail."""
        store, _ = _store(StubDynamoDb(), shards=shards)
        rng = random.Random(shards)
        for occurred in (DAY1, DAY2 - 1, DAY2, DAY1 + 13 * HOUR):
            event_id = _uuid(rng)
            bucket = store.item(_event(event_id, occurred), batch_id="b", ingested_ns=0)["bucket"]
            day = datetime.fromtimestamp(occurred // NS, UTC).strftime("%Y-%m-%d")
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}#\d+", bucket["S"])
            assert bucket["S"] == f"{day}#{int(event_id[-4:], 16) % shards}"

    def test_bucket_spreads_over_every_shard(self) -> None:
        """Random ids land in every shard, so one day's writes do not share a partition."""
        store, _ = _store(StubDynamoDb(), shards=4)
        rng = random.Random(8)
        shards = {store.bucket(_uuid(rng), DAY1).split("#")[1] for _ in range(200)}
        assert shards == {"0", "1", "2", "3"}

    def test_sort_key_orders_by_time_then_id(self) -> None:
        """Sort keys compare as text in the same order as (occurred_at, event_id)."""
        store, _ = _store(StubDynamoDb())
        rng = random.Random(9)
        times = [DAY1 - 1, DAY1, DAY1 + 9, DAY1 + 10, DAY1 + NS - 1, DAY1 + NS, DAY2 + 1]
        times += [0, 999_999_999, 10 * NS, 4_102_444_800 * NS]  # 1970 to 2100
        events = [_event(_uuid(rng), t) for t in times for _ in range(2)]
        items = [store.item(e, batch_id="b", ingested_ns=0) for e in events]
        rng.shuffle(items)
        by_key = sorted(items, key=lambda item: item["sk"]["S"])
        by_time = sorted(events, key=lambda e: (e.occurred_at.ToNanoseconds(), e.event_id))
        assert [item["event_id"]["S"] for item in by_key] == [e.event_id for e in by_time]

    @pytest.mark.parametrize("days", [1, 30, 365])
    def test_expires_at_is_occurred_plus_retention(self, days: int) -> None:
        """The TTL attribute is the occurrence time in epoch seconds plus the retention."""
        store, _ = _store(StubDynamoDb(), retention_days=days)
        item = store.item(_event(_uuid(random.Random(0)), DAY1 + 999), batch_id="b", ingested_ns=0)
        assert item["expires_at"] == {"N": str(DAY1 // NS + days * 86_400)}


class TestGet:
    def test_reads_back_what_was_written(self) -> None:
        """get returns the event, its batch and its ingest time exactly; unknown ids None."""
        stub = StubDynamoDb()
        store, _ = _store(stub)
        event = _event(_uuid(random.Random(10)), DAY1 + 7, query="hello")
        store.write([store.item(event, batch_id="batch-1", ingested_ns=DAY2 + 123)])
        stored = store.get(event.event_id)
        assert stored is not None
        assert stored.event == event
        assert stored.batch_id == "batch-1"
        assert stored.ingested_at_ns == DAY2 + 123
        assert store.get(_uuid(random.Random(11))) is None


def _populate(
    stub: StubDynamoDb, store: EventStore, count: int, seed: int
) -> list[analytics_pb2.AnalyticsEvent]:
    """``count`` events from 20:00 on day 1 to 04:00 on day 2, some at identical times."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        occurred = DAY2 - 4 * HOUR + rng.randrange(8 * HOUR)
        events.append(_event(_uuid(rng), occurred))
        if i % 10 == 0:
            events.append(_event(_uuid(rng), occurred))  # a tie, broken by event id
    store.write(_items(store, events))
    assert len(stub.table) == len(events)
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
    @pytest.mark.parametrize("page_cap", [2, 1_000], ids=["small-ddb-pages", "one-ddb-page"])
    @pytest.mark.parametrize("shards", [1, 4])
    def test_pages_cover_every_event_once_in_order(
        self, newest_first: bool, page_size: int, page_cap: int, shards: int
    ) -> None:
        """Following the cursor from the first page to the last yields every event in the
        range exactly once, in time order, across two days and every shard."""
        stub = StubDynamoDb(page_cap=page_cap)
        store, _ = _store(stub, shards=shards)
        events = _populate(stub, store, 40, seed=page_size)
        assert len({item["bucket"]["S"] for item in stub.table.values()}) == 2 * shards
        pages = _page_all(store, DAY1, DAY2 + 86_400 * NS, page_size, newest_first)
        assert [e for page in pages for e in page] == _ordered(events, newest_first)
        assert all(len(page) == page_size for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= page_size

    @pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
    def test_range_is_half_open(self, newest_first: bool) -> None:
        """Only events with start <= occurred_at < end are listed, across the day boundary."""
        stub = StubDynamoDb(page_cap=3)
        store, _ = _store(stub, shards=3)
        events = _populate(stub, store, 30, seed=21)
        times = sorted({e.occurred_at.ToNanoseconds() for e in events})
        start, end = times[5], times[-5]  # both are event times: bounds are exact
        assert start < DAY2 <= end
        inside = [e for e in events if start <= e.occurred_at.ToNanoseconds() < end]
        pages = _page_all(store, start, end, 4, newest_first)
        assert [e for page in pages for e in page] == _ordered(inside, newest_first)

    def test_exact_page_leaves_no_dangling_cursor(self) -> None:
        """When the events fill the last page exactly, no cursor to an empty page is given."""
        stub = StubDynamoDb()
        store, _ = _store(stub)
        rng = random.Random(30)
        events = [_event(_uuid(rng), DAY1 + i * HOUR) for i in range(6)]
        store.write(_items(store, events))
        page, cursor = store.list(DAY1, DAY2, page_size=6)
        assert len(page) == 6
        assert cursor is None
        page, cursor = store.list(DAY1, DAY2, page_size=3)
        assert cursor is not None

    def test_empty_range(self) -> None:
        """A range with no events gives an empty page and no cursor."""
        stub = StubDynamoDb()
        store, _ = _store(stub)
        assert store.list(DAY1, DAY2, page_size=10) == ([], None)

    def test_queries_only_the_days_in_range(self) -> None:
        """Each UTC day the range touches is queried once per shard, no other day."""
        stub = StubDynamoDb()
        store, _ = _store(stub, shards=2)
        store.list(DAY1 + HOUR, DAY2 + HOUR, page_size=10)
        buckets = sorted(q["ExpressionAttributeValues"][":p"]["S"] for q in stub.queries)
        assert buckets == ["2026-11-27#0", "2026-11-27#1", "2026-11-28#0", "2026-11-28#1"]


class TestSummary:
    def test_counts_errors_latency_and_skills(self) -> None:
        """Summary totals events, non-OK statuses, mean processing time and top skills."""
        stub = StubDynamoDb(page_cap=2)
        store, _ = _store(stub)
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
        store.write(_items(store, events))
        summary = store.summary(DAY1, DAY2)
        assert summary.event_count == 6
        assert summary.error_count == 2
        assert summary.mean_processing_ms == pytest.approx(3.5)
        assert summary.top_skills == [("Go", 4), ("Rust", 3)]


def test_iso_ns_is_fixed_width() -> None:
    """iso_ns always renders nine fractional digits, so text order is time order."""
    assert iso_ns(DAY1) == "2026-11-27T00:00:00.000000000Z"
    assert iso_ns(DAY1 + 1) == "2026-11-27T00:00:00.000000001Z"
