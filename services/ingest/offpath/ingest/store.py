"""The DynamoDB event store: the table's schema, its item format, reads and
writes. Nothing outside this module knows what an item looks like; set-up
(``make bootstrap``, the tests) and the CloudFormation template's tests read
the schema from here.

One item per event, keyed by ``event_id``: writing the same event again
(an SQS redelivery) overwrites it, so raw events stay exactly-once in effect.
The ``by_time`` index reaches events by time range without a Scan: its
partition key is the UTC day plus a write shard (``2026-11-27#3``), so one
day's writes spread over ``shards`` partitions, and its sort key is the
occurred-at time (fixed-width ISO 8601, nanoseconds) then the event id.
Items carry the event's protobuf bytes (``payload``, the source of truth for
reads, unknown fields included) beside readable attributes for people and
queries, and ``expires_at`` for TTL.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, Unpack

import structlog

from offpath.kit.backoff import Backoff
from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        BatchWriteItemInputTypeDef,
        BatchWriteItemOutputTypeDef,
        CreateTableInputTypeDef,
        GetItemInputTypeDef,
        GetItemOutputTypeDef,
        QueryInputTypeDef,
        QueryOutputTypeDef,
    )

log = structlog.get_logger("offpath.ingest.store")

# -- the schema --------------------------------------------------------------------
# Raw events are keyed by event_id (a redelivery overwrites); the by_time
# index reaches them by time range without a Scan: partition = UTC day +
# write shard, sort = occurred_at then event_id. TTL on expires_at.
TABLE_KEY: Final = "event_id"
TIME_INDEX: Final = "by_time"
TIME_PARTITION: Final = "bucket"
TIME_SORT: Final = "sk"
TTL_ATTRIBUTE: Final = "expires_at"


def create_table_request(table: str) -> CreateTableInputTypeDef:
    """The ``CreateTable`` request for the events table (on-demand billing)."""
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": TABLE_KEY, "AttributeType": "S"},
            {"AttributeName": TIME_PARTITION, "AttributeType": "S"},
            {"AttributeName": TIME_SORT, "AttributeType": "S"},
        ],
        "KeySchema": [{"AttributeName": TABLE_KEY, "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": TIME_INDEX,
                "KeySchema": [
                    {"AttributeName": TIME_PARTITION, "KeyType": "HASH"},
                    {"AttributeName": TIME_SORT, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


class EventTableClient(Protocol):
    """The DynamoDB calls the store makes (boto3's DynamoDB client has them)."""

    def batch_write_item(
        self, **kwargs: Unpack[BatchWriteItemInputTypeDef]
    ) -> BatchWriteItemOutputTypeDef: ...

    def get_item(self, **kwargs: Unpack[GetItemInputTypeDef]) -> GetItemOutputTypeDef: ...

    def query(self, **kwargs: Unpack[QueryInputTypeDef]) -> QueryOutputTypeDef: ...


_NS_PER_S = 1_000_000_000
_BATCH_WRITE_MAX = 25
_WRITE_ATTEMPTS = 8
# The first retry of unprocessed items waits up to 50 ms, doubling to 2 s.
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0
MAX_RANGE_DAYS = 31


class WriteError(RuntimeError):
    """Items could not be written; the caller must not acknowledge them."""


def iso_ns(ns: int) -> str:
    """Fixed-width UTC ISO 8601 with nanoseconds: sorts as text in time order."""
    seconds, nanos = divmod(ns, _NS_PER_S)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _day(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // _NS_PER_S, UTC).replace(hour=0, minute=0, second=0)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event: analytics_pb2.AnalyticsEvent
    ingested_at_ns: int
    batch_id: str


@dataclass(frozen=True, slots=True)
class Summary:
    event_count: int
    error_count: int
    top_skills: list[tuple[str, int]]
    mean_processing_ms: float


class EventStore:
    """Reads and writes events in one DynamoDB table (low-level client;
    thread-safe, so the read API calls it from worker threads)."""

    def __init__(
        self,
        client: EventTableClient,
        table: str,
        *,
        shards: int = 4,
        retention_days: int = 30,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._table = table
        self._shards = shards
        self._retention_s = retention_days * 86_400
        self._sleep = sleep
        self._backoff = Backoff(_BACKOFF_BASE_S, _BACKOFF_CAP_S, rng)

    # -- writing -----------------------------------------------------------

    def bucket(self, event_id: str, occurred_ns: int) -> str:
        """Time index partition: UTC day and a shard from the id's random tail."""
        shard = int(event_id[-4:], 16) % self._shards
        return f"{_day(occurred_ns):%Y-%m-%d}#{shard}"

    def _item(
        self,
        event: analytics_pb2.AnalyticsEvent,
        *,
        batch_id: str,
        ingested_ns: int,
    ) -> dict[str, Any]:
        """The DynamoDB item for one validated event. The key is the id in
        canonical (lower-case) form, as GetEvent looks it up: a producer that
        writes UUIDs in upper case is still found (the payload keeps its text)."""
        occurred = event.occurred_at.ToNanoseconds()
        event_id = event.event_id.lower()
        processing_ms = (
            event.processing_time.seconds * 1000 + event.processing_time.nanos / 1_000_000
        )
        return {
            TABLE_KEY: {"S": event_id},
            TIME_PARTITION: {"S": self.bucket(event_id, occurred)},
            TIME_SORT: {"S": f"{iso_ns(occurred)}#{event_id}"},
            "occurred_at": {"S": iso_ns(occurred)},
            "service": {"S": event.service},
            "method": {"S": event.method},
            "query": {"S": event.query},
            "model": {"S": event.model},
            "token_count": {"N": str(event.token_count)},
            "status_code": {"N": str(event.status_code)},
            "processing_ms": {"N": f"{processing_ms:.3f}"},
            "skills": {
                "L": [
                    {"M": {"name": {"S": s.name}, "score": {"N": f"{s.score:.6f}"}}}
                    for s in event.matched_skills
                ]
            },
            "attributes": {"M": {k: {"S": v} for k, v in event.attributes.items()}},
            "producer_id": {"S": event.producer_id},
            "batch_id": {"S": batch_id},
            "ingested_at": {"S": iso_ns(ingested_ns)},
            TTL_ATTRIBUTE: {"N": str(occurred // _NS_PER_S + self._retention_s)},
            "payload": {"B": event.SerializeToString()},
        }

    def write(
        self,
        batches: Iterable[tuple[str, Sequence[analytics_pb2.AnalyticsEvent]]],
        *,
        ingested_ns: int,
    ) -> int:
        """Store the events of each ``(batch_id, events)`` (BatchWriteItem, 25
        items a call), retrying unprocessed ones with backoff; returns how
        many distinct events were written. An event id seen twice keeps its
        last copy. Raises :class:`WriteError` when something is still
        unwritten: the caller must then not acknowledge any of them."""
        items = [
            self._item(event, batch_id=batch_id, ingested_ns=ingested_ns)
            for batch_id, events in batches
            for event in events
        ]
        unique = list({item[TABLE_KEY]["S"]: item for item in items}.values())
        for start in range(0, len(unique), _BATCH_WRITE_MAX):
            chunk = unique[start : start + _BATCH_WRITE_MAX]
            requests: list[Any] = [{"PutRequest": {"Item": item}} for item in chunk]
            for attempt in range(_WRITE_ATTEMPTS):
                try:
                    response = self._client.batch_write_item(RequestItems={self._table: requests})
                except Exception as exc:
                    raise WriteError(f"BatchWriteItem failed: {exc}") from exc
                requests = list(response.get("UnprocessedItems", {}).get(self._table, []))
                if not requests:
                    break
                if attempt == _WRITE_ATTEMPTS - 1:
                    continue  # out of attempts: no point waiting before raising
                delay = self._backoff.delay(attempt + 1)
                log.warning("ddb_unprocessed_items", items=len(requests), attempt=attempt + 1)
                self._sleep(delay)
            else:
                raise WriteError(
                    f"{len(requests)} items still unprocessed after {_WRITE_ATTEMPTS} attempts"
                )
        return len(unique)

    # -- reading -----------------------------------------------------------

    def get(self, event_id: str) -> StoredEvent | None:
        response = self._client.get_item(
            TableName=self._table,
            Key={TABLE_KEY: {"S": event_id}},
            ConsistentRead=True,
            ProjectionExpression="payload, ingested_at, batch_id",
        )
        item = response.get("Item")
        return None if item is None else _stored(item)

    def _days(self, start_ns: int, end_ns: int, newest_first: bool) -> list[str]:
        first, last = _day(start_ns), _day(end_ns - 1)
        days = []
        day = first
        while day <= last:
            days.append(f"{day:%Y-%m-%d}")
            day += timedelta(days=1)
        return days[::-1] if newest_first else days

    def _query_bucket(
        self,
        bucket: str,
        low: str,
        high: str,
        *,
        newest_first: bool,
        limit: int | None,
        projection: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Items of one time partition with low <= sk <= high, in order."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": TIME_INDEX,
            "KeyConditionExpression": "#p = :p AND #s BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": {"#p": TIME_PARTITION, "#s": TIME_SORT},
            "ExpressionAttributeValues": {
                ":p": {"S": bucket},
                ":lo": {"S": low},
                ":hi": {"S": high},
            },
            "ScanIndexForward": not newest_first,
        }
        if projection is not None:
            kwargs["ProjectionExpression"] = projection
        yielded = 0
        while True:
            if limit is not None:
                kwargs["Limit"] = limit - yielded
            response = self._client.query(**kwargs)
            for item in response.get("Items", []):
                yield item
                yielded += 1
            last = response.get("LastEvaluatedKey")
            if not last or (limit is not None and yielded >= limit):
                return
            kwargs["ExclusiveStartKey"] = last

    def list(
        self,
        start_ns: int,
        end_ns: int,
        *,
        page_size: int,
        newest_first: bool = False,
        cursor: str | None = None,
    ) -> tuple[list[StoredEvent], str | None]:
        """Events with start <= occurred_at < end, ordered by time; returns
        the page and the cursor for the next one (None at the end). A cursor
        must come from a page of the same range (:meth:`cursor_fits`)."""
        low, high = _sort_bounds(start_ns, end_ns)
        if cursor is not None:
            if not self.cursor_fits(start_ns, end_ns, cursor):
                raise ValueError(f"cursor {cursor[:80]!r} is outside the range")
            if newest_first:
                high = min(high, cursor)
            else:
                low = max(low, cursor)
        page: list[dict[str, Any]] = []
        more = False
        for day in self._days(start_ns, end_ns, newest_first):
            # +2: one more than fits tells whether there is a next page, and
            # the cursor item itself (BETWEEN is inclusive) may be among them.
            want = page_size - len(page)
            streams = [
                self._query_bucket(
                    f"{day}#{shard}", low, high, newest_first=newest_first, limit=want + 2
                )
                for shard in range(self._shards)
            ]
            merged: Iterable[dict[str, Any]] = heapq.merge(
                *streams, key=lambda item: item[TIME_SORT]["S"], reverse=newest_first
            )
            for item in merged:
                if item[TIME_SORT]["S"] == cursor:
                    continue  # BETWEEN is inclusive; the cursor was the last page's end
                if len(page) == page_size:
                    more = True
                    break
                page.append(item)
            if more:
                break
        next_cursor = page[-1][TIME_SORT]["S"] if more and page else None
        return [_stored(item) for item in page], next_cursor

    @staticmethod
    def cursor_fits(start_ns: int, end_ns: int, cursor: str) -> bool:
        """Whether ``cursor`` can be the end of a page of [start, end): a sort
        key inside the range's bounds. No I/O: a forged page token is refused
        before it reaches DynamoDB."""
        low, high = _sort_bounds(start_ns, end_ns)
        return low <= cursor <= high

    def summary(self, start_ns: int, end_ns: int) -> Summary:
        """Totals over [start, end), read from the time index."""
        low, high = _sort_bounds(start_ns, end_ns)
        count = errors = 0
        total_ms = 0.0
        skills: dict[str, int] = {}
        for day in self._days(start_ns, end_ns, newest_first=False):
            for shard in range(self._shards):
                for item in self._query_bucket(
                    f"{day}#{shard}",
                    low,
                    high,
                    newest_first=False,
                    limit=None,
                    projection="status_code, processing_ms, skills",
                ):
                    count += 1
                    if item.get("status_code", {}).get("N", "0") != "0":
                        errors += 1
                    total_ms += float(item.get("processing_ms", {}).get("N", "0"))
                    for skill in item.get("skills", {}).get("L", []):
                        name = skill["M"]["name"]["S"]
                        skills[name] = skills.get(name, 0) + 1
        top = sorted(skills.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return Summary(count, errors, top, total_ms / count if count else 0.0)


def _sort_bounds(start_ns: int, end_ns: int) -> tuple[str, str]:
    """The time index's sort-key bounds of [start, end)."""
    # '~' sorts after every character of an id.
    return f"{iso_ns(start_ns)}#", f"{iso_ns(end_ns - 1)}#~"


def _stored(item: dict[str, Any]) -> StoredEvent:
    event = analytics_pb2.AnalyticsEvent.FromString(item["payload"]["B"])
    ingested = item.get("ingested_at", {}).get("S", "")
    return StoredEvent(
        event=event,
        ingested_at_ns=_parse_iso_ns(ingested),
        batch_id=item.get("batch_id", {}).get("S", ""),
    )


def _parse_iso_ns(text: str) -> int:
    if not text:
        return 0
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * _NS_PER_S + int(frac.ljust(9, "0")[:9] or 0)
