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

import hashlib
import heapq
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, Unpack, cast

import structlog
from botocore.exceptions import ClientError

from offpath.ingest import rollups
from offpath.kit.backoff import Backoff
from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        CreateTableInputTypeDef,
        GetItemInputTypeDef,
        GetItemOutputTypeDef,
        PutItemInputTypeDef,
        PutItemOutputTypeDef,
        QueryInputTypeDef,
        QueryOutputTypeDef,
        TransactWriteItemsInputTypeDef,
        TransactWriteItemsOutputTypeDef,
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
# The id of the message whose rollups count the event (see EventStore.write).
CLAIM_ATTRIBUTE: Final = "claimed_by"


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

    def put_item(self, **kwargs: Unpack[PutItemInputTypeDef]) -> PutItemOutputTypeDef: ...

    def transact_write_items(
        self, **kwargs: Unpack[TransactWriteItemsInputTypeDef]
    ) -> TransactWriteItemsOutputTypeDef: ...

    def get_item(self, **kwargs: Unpack[GetItemInputTypeDef]) -> GetItemOutputTypeDef: ...

    def query(self, **kwargs: Unpack[QueryInputTypeDef]) -> QueryOutputTypeDef: ...


_NS_PER_S = 1_000_000_000
_WRITE_ATTEMPTS = 8
_PUT_WORKERS = 8
# The first retry of a conflicting transaction waits up to 50 ms, doubling to 2 s.
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0
MAX_RANGE_DAYS = 31
_TOP = 10
# The times reads serve: 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z
# (a protobuf Timestamp reaches back to year 1, but nothing is stored before
# 1970, and the sort keys' four-digit years end in 9999).
TIME_MIN_NS: Final = 0
TIME_MAX_NS: Final = 253_402_300_799 * 1_000_000_000 + 999_999_999
# A cursor as list() returns it: a sort key (an occurred-at time then an event
# id, lower case), or a day's edge (the time then nothing, or then "~").
_CURSOR: Final = re.compile(
    r"(?P<time>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z)#(?:[0-9a-f-]{1,36}|~)?"
)


class WriteError(RuntimeError):
    """Items could not be written; the caller must not acknowledge them."""


class ReadStopped(Exception):
    """A read stopped before it finished: its caller went away
    (``reason == "cancelled"``) or its time ran out (``"deadline"``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReadBudget:
    """What one read may spend, checked before every DynamoDB request it makes.

    - ``cancel()`` (from any thread: the caller went away) and the hard
      deadline stop the read: the next check raises :class:`ReadStopped`.
    - ``max_requests`` and the soft deadline are where a ListEvents page may
      end early, at a consistent point, once it has made progress (see
      :meth:`EventStore.list`); other reads ignore them.

    A request in flight is not interrupted (a boto3 call cannot be): a read
    stops within one request of its flag or deadline, and one request takes
    at most the DynamoDB client's read timeout times its attempts.
    Deadlines are ``time.monotonic()`` values; None: no limit.
    """

    def __init__(
        self,
        *,
        max_requests: int | None = None,
        soft_deadline: float | None = None,
        hard_deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_requests = max_requests
        self.soft_deadline = soft_deadline
        self.hard_deadline = hard_deadline
        self.requests = 0
        self._clock = clock
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def charge(self) -> None:
        """Before one DynamoDB request: raise :class:`ReadStopped` if the
        read must stop, else count the request."""
        if self._cancelled.is_set():
            raise ReadStopped("cancelled")
        if self.hard_deadline is not None and self._clock() >= self.hard_deadline:
            raise ReadStopped("deadline")
        self.requests += 1

    def spent(self) -> bool:
        """Whether the read has made its requests or used its soft time."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            return True
        return self.soft_deadline is not None and self._clock() >= self.soft_deadline


class _PageCut(Exception):
    """Raised inside a listing to end the page early (budget spent)."""


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
    """Totals over whole rollup buckets: [covered_start, covered_end)."""

    event_count: int
    error_count: int
    top_skills: list[tuple[str, int]]
    mean_processing_ms: float
    errors_by_code: list[tuple[int, int]] = field(default_factory=list)
    # (quantile, ms) for 0.5, 0.95, 0.99, within rollups.RELATIVE_ERROR
    percentiles_ms: list[tuple[float, float]] = field(default_factory=list)
    top_queries: list[tuple[str, int]] = field(default_factory=list)
    other_queries: int = 0
    # (model, events, tokens), most events first
    models: list[tuple[str, int, int]] = field(default_factory=list)
    # (bucket start ns, events, errors), oldest first
    volume: list[tuple[int, int, int]] = field(default_factory=list)
    # bucket start ns -> that bucket's (p50, p95, p99) in ms, as percentiles_ms
    bucket_percentiles_ms: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    bucket_s: int = 3600
    covered_start_ns: int = 0
    covered_end_ns: int = 0
    reads: int = 0


@dataclass(frozen=True, slots=True)
class Claimed:
    """What :meth:`EventStore.claim` found: the events each message owns
    (message id -> events), and how many distinct events there were."""

    owned: dict[str, list[analytics_pb2.AnalyticsEvent]]
    events: int


@dataclass(slots=True)
class WriteStats:
    """What the writes cost, as DynamoDB reports it (``ReturnConsumedCapacity``)."""

    puts: int = 0
    duplicates: int = 0
    transactions: int = 0
    transaction_items: int = 0
    replays: int = 0
    write_units: float = 0.0


class EventStore:
    """Reads and writes events in one DynamoDB table (low-level client;
    thread-safe, so the read API calls it from worker threads)."""

    def __init__(
        self,
        client: EventTableClient,
        table: str,
        *,
        rollup_table: str | None = None,
        shards: int = 4,
        retention_days: int = 30,
        bucket_s: int = 3600,
        workers: int = _PUT_WORKERS,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._table = table
        self._rollup_table = rollup_table or rollup_table_for(table)
        self._shards = shards
        self._retention_s = retention_days * 86_400
        self._bucket_s = bucket_s
        self._workers = workers
        self._sleep = sleep
        self._backoff = Backoff(_BACKOFF_BASE_S, _BACKOFF_CAP_S, rng)
        self.stats = WriteStats()

    @property
    def rollup_table(self) -> str:
        return self._rollup_table

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
        """Store the events of each ``(batch_id, events)`` (one SQS message's
        batch) and add them to the rollups, exactly once whatever is
        redelivered or re-sent; returns how many distinct events the call
        carried. Raises :class:`WriteError` when something is unwritten: the
        caller must then not acknowledge any of the messages (a redelivery
        finishes the job and counts nothing twice).

        Per message: (a) each event is a conditional ``PutItem`` claiming
        it for the message (``claimed_by``); a put refused because another
        message claimed the event first is a re-sent duplicate, left out of
        this message's rollups. (b) One ``TransactWriteItems`` per chunk of
        rollup updates, with a marker item that exists once the chunk is
        applied: a redelivered message's transaction is cancelled by its
        marker. A crash between (a) and (b) is finished by the redelivery,
        whose puts succeed again (same claimant) and whose deltas are the
        same (they depend on the events only)."""
        claimed = self.claim(batches, ingested_ns=ingested_ns)
        for message_id, mine in claimed.owned.items():
            self.apply_rollups(message_id, mine)
        return claimed.events

    def claim(
        self,
        batches: Iterable[tuple[str, Sequence[analytics_pb2.AnalyticsEvent]]],
        *,
        ingested_ns: int,
    ) -> Claimed:
        """Step (a) of :meth:`write`: put every event, claimed for its
        message; returns the events each message owns."""
        messages: dict[str, dict[str, analytics_pb2.AnalyticsEvent]] = {}
        for batch_id, events in batches:
            unique = messages.setdefault(_message_id(batch_id, events), {})
            for event in events:
                unique[event.event_id.lower()] = event
        claims = [
            (message_id, event_id, event)
            for message_id, events in messages.items()
            for event_id, event in events.items()
        ]
        # Conditional puts cannot be batched: run them side by side. The
        # workers only call DynamoDB; results come back to this thread.
        with ThreadPoolExecutor(max_workers=max(1, min(self._workers, len(claims)))) as pool:
            results = list(pool.map(lambda c: self._claim(c[0], c[2], ingested_ns), claims))
        self.stats.puts += len(results)
        self.stats.write_units += sum(units for _, units in results)
        owned: dict[str, list[analytics_pb2.AnalyticsEvent]] = {m: [] for m in messages}
        for (message_id, _, event), (ok, _) in zip(claims, results, strict=True):
            if ok:
                owned[message_id].append(event)
            else:
                self.stats.duplicates += 1
        return Claimed(owned, len({event_id for _, event_id, _ in claims}))

    def apply_rollups(
        self, message_id: str, events: Sequence[analytics_pb2.AnalyticsEvent]
    ) -> None:
        """Step (b) of :meth:`write`: add the events a message owns to the
        rollups, once (a marker per chunk)."""
        updates = rollups.split(rollups.deltas(events, bucket_s=self._bucket_s).values())
        for index, chunk in enumerate(rollups.chunks(updates)):
            self._transact(message_id, index, chunk)

    def _claim(
        self, message_id: str, event: analytics_pb2.AnalyticsEvent, ingested_ns: int
    ) -> tuple[bool, float]:
        """Put one event's item for ``message_id``: (owned, write units).
        Not owned when another message claimed it first (its rollup
        contribution is that message's)."""
        item = self._item(event, batch_id=message_id, ingested_ns=ingested_ns)
        item[CLAIM_ATTRIBUTE] = {"S": message_id}
        try:
            response = self._client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(#k) OR #c = :m",
                ExpressionAttributeNames={"#k": TABLE_KEY, "#c": CLAIM_ATTRIBUTE},
                ExpressionAttributeValues={":m": {"S": message_id}},
                ReturnConsumedCapacity="TOTAL",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                # A refused write is charged too, as a write of the item.
                return False, _capacity(cast("Any", exc.response).get("ConsumedCapacity"))
            raise WriteError(f"PutItem failed: {exc}") from exc
        except Exception as exc:
            raise WriteError(f"PutItem failed: {exc}") from exc
        return True, _capacity(response.get("ConsumedCapacity"))

    def _transact(self, message_id: str, index: int, chunk: list[rollups.Update]) -> None:
        """Apply one chunk with its marker; retries conflicts, falls back to
        "other" for query texts that no longer fit their item."""
        overflow: set[tuple[str, str]] = set()
        new_keys = self._new_query_keys(chunk)
        for attempt in range(_WRITE_ATTEMPTS):
            items = [self._marker(message_id, index)] + [
                self._rollup_update(u, new_keys.get((u.pk, u.sk), 0), (u.pk, u.sk) in overflow)
                for u in chunk
            ]
            try:
                response = self._client.transact_write_items(
                    TransactItems=cast("Any", items), ReturnConsumedCapacity="TOTAL"
                )
            except ClientError as exc:
                if _error_code(exc) != "TransactionCanceledException":
                    raise WriteError(f"TransactWriteItems failed: {exc}") from exc
                reasons = [
                    r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])
                ]
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    self.stats.replays += 1
                    return  # the marker exists: this chunk was applied before
                full = {
                    (u.pk, u.sk)
                    for u, code in zip(chunk, reasons[1:], strict=False)
                    if code == "ConditionalCheckFailed"
                }
                if full:
                    overflow |= full
                    continue
                if any(code == "TransactionConflict" for code in reasons) or not reasons:
                    if attempt < _WRITE_ATTEMPTS - 1:
                        delay = self._backoff.delay(attempt + 1)
                        log.warning("rollup_conflict", attempt=attempt + 1, retry_in_s=delay)
                        self._sleep(delay)
                    continue
                raise WriteError(f"TransactWriteItems cancelled: {reasons}") from exc
            except Exception as exc:
                raise WriteError(f"TransactWriteItems failed: {exc}") from exc
            self.stats.transactions += 1
            self.stats.transaction_items += len(items)
            self.stats.write_units += sum(
                _capacity(c) for c in response.get("ConsumedCapacity", [])
            )
            return
        raise WriteError(f"rollups of {message_id} not applied after {_WRITE_ATTEMPTS} attempts")

    def _new_query_keys(self, chunk: Sequence[rollups.Update]) -> dict[tuple[str, str], int]:
        """For each query item of the chunk, how many of its texts it does not
        hold yet (an eventually consistent read: texts are never removed, so a
        stale read only over-counts, which keeps the cap safe)."""
        out: dict[tuple[str, str], int] = {}
        for update in chunk:
            if not rollups.is_query_item(update.sk):
                continue
            names = {f"#a{i}": name for i, name in enumerate(sorted(update.adds))}
            response = self._client.get_item(
                TableName=self._rollup_table,
                Key={
                    rollups.ROLLUP_PARTITION: {"S": update.pk},
                    rollups.ROLLUP_SORT: {"S": update.sk},
                },
                ProjectionExpression=", ".join(names),
                ExpressionAttributeNames=names,
            )
            held = set(response.get("Item", {}))
            out[(update.pk, update.sk)] = sum(1 for name in update.adds if name not in held)
        return out

    def _marker(self, message_id: str, index: int) -> dict[str, Any]:
        pk, sk = rollups.marker_key(message_id, index)
        expires = int(time.time()) + self._retention_s
        return {
            "Update": {
                "TableName": self._rollup_table,
                "Key": {rollups.ROLLUP_PARTITION: {"S": pk}, rollups.ROLLUP_SORT: {"S": sk}},
                "UpdateExpression": "SET #t = :t",
                "ConditionExpression": "attribute_not_exists(#p)",
                "ExpressionAttributeNames": {
                    "#t": rollups.ROLLUP_TTL,
                    "#p": rollups.ROLLUP_PARTITION,
                },
                "ExpressionAttributeValues": {":t": {"N": str(expires)}},
            }
        }

    def _rollup_update(
        self, update: rollups.Update, new_keys: int, overflow: bool
    ) -> dict[str, Any]:
        """One rollup item's ``Update``: ``SET`` of its labels and TTL (the
        same values every time), ``ADD`` of its counters."""
        adds: dict[str, int] = dict(update.adds)
        condition: str | None = None
        values: dict[str, Any] = {}
        if overflow:
            adds = {"qo": sum(adds.values())}
        elif new_keys:
            adds["qn"] = new_keys
            condition = "attribute_not_exists(#qn) OR #qn <= :room"
            values[":room"] = {"N": str(rollups.QUERY_KEYS_CAP - new_keys)}
        names = {"#svc": "service", "#mth": "method", "#t": rollups.ROLLUP_TTL}
        values.update(
            {
                ":svc": {"S": update.service},
                ":mth": {"S": update.method},
                ":t": {
                    "N": str(update.bucket_ns // _NS_PER_S + self._bucket_s + self._retention_s)
                },
            }
        )
        clauses = []
        for i, (name, amount) in enumerate(sorted(adds.items())):
            placeholder = "#qn" if name == "qn" else f"#c{i}"
            names[placeholder] = name
            values[f":c{i}"] = {"N": str(amount)}
            clauses.append(f"{placeholder} :c{i}")
        request: dict[str, Any] = {
            "TableName": self._rollup_table,
            "Key": {
                rollups.ROLLUP_PARTITION: {"S": update.pk},
                rollups.ROLLUP_SORT: {"S": update.sk},
            },
            "UpdateExpression": "SET #svc = :svc, #mth = :mth, #t = :t ADD " + ", ".join(clauses),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        if condition is not None:
            request["ConditionExpression"] = condition
        return {"Update": request}

    # -- reading -----------------------------------------------------------
    # Every read takes a ReadBudget (default: unlimited) and charges it
    # before each DynamoDB request, so its caller can stop it between
    # requests and bound what one call costs.

    def get(self, event_id: str, *, budget: ReadBudget | None = None) -> StoredEvent | None:
        (budget or ReadBudget()).charge()
        response = self._client.get_item(
            TableName=self._table,
            Key={TABLE_KEY: {"S": event_id}},
            ConsistentRead=True,
            ProjectionExpression="payload, ingested_at, batch_id",
        )
        item = response.get("Item")
        return None if item is None else _stored(item)

    @staticmethod
    def _days(start_ns: int, end_ns: int, newest_first: bool) -> list[str]:
        """The UTC days [start, end) touches (``YYYY-MM-DD``), in order."""
        _check_span(start_ns, end_ns)
        first, last = _day(start_ns).date(), _day(end_ns - 1).date()
        # Counted, not stepped past the last day: 9999-12-31 has no next day.
        days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        return days[::-1] if newest_first else days

    def _query_bucket(
        self,
        bucket: str,
        low: str,
        high: str,
        *,
        newest_first: bool,
        limit: int,
        before_request: Callable[[], None],
    ) -> Iterator[dict[str, Any]]:
        """Items of one time partition with low <= sk <= high, in order, at
        most ``limit``; ``before_request`` runs before each Query."""
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
        yielded = 0
        while True:
            kwargs["Limit"] = limit - yielded
            before_request()
            response = self._client.query(**kwargs)
            for item in response.get("Items", []):
                yield item
                yielded += 1
            last = response.get("LastEvaluatedKey")
            if not last or yielded >= limit:
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
        budget: ReadBudget | None = None,
    ) -> tuple[list[StoredEvent], str | None]:
        """Events with start <= occurred_at < end, ordered by time; returns
        the page and the cursor for the next one (None at the end). A cursor
        must come from a page of the same range (:meth:`cursor_fits`); the
        days before it (after it, newest first) are not read again.

        The page may hold fewer than ``page_size`` events and still have a
        next cursor, as a DynamoDB Query does: once the budget is spent
        (``max_requests`` Queries made, or the soft deadline passed) and
        the listing has moved past ``cursor``, the page ends where
        everything before it has been read: after its last event, or at
        the start of the next day to read. So each call makes progress, however
        sparse the range, and makes at most ``max(max_requests, shards + 1)``
        Queries (the progress may take a day's first Query per shard, and one
        more after the cursor)."""
        if page_size < 1:
            raise ValueError(f"page_size {page_size} is below 1")
        budget = budget or ReadBudget()
        low, high = _sort_bounds(start_ns, end_ns)
        days = self._days(start_ns, end_ns, newest_first)
        if cursor is not None:
            if not self.cursor_fits(start_ns, end_ns, cursor):
                raise ValueError(f"cursor {cursor[:80]!r} is outside the range")
            if newest_first:
                high = min(high, cursor)
                days = [day for day in days if day <= cursor[:10]]
            else:
                low = max(low, cursor)
                days = [day for day in days if day >= cursor[:10]]
        page: list[dict[str, Any]] = []
        # Everything on the page's side of `position` has been read: it is
        # the next page's cursor whenever this one ends early.
        position = cursor

        def before_request() -> None:
            if position != cursor and budget.spent():
                raise _PageCut
            budget.charge()

        more = False
        try:
            for index, day in enumerate(days):
                # +2: one more than fits tells whether there is a next page, and
                # the cursor item itself (BETWEEN is inclusive) may be among them.
                want = page_size - len(page)
                streams = [
                    self._query_bucket(
                        f"{day}#{shard}",
                        low,
                        high,
                        newest_first=newest_first,
                        limit=want + 2,
                        before_request=before_request,
                    )
                    for shard in range(self._shards)
                ]
                merged: Iterable[dict[str, Any]] = heapq.merge(
                    *streams, key=lambda item: item[TIME_SORT]["S"], reverse=newest_first
                )
                for item in merged:
                    sort_key = item[TIME_SORT]["S"]
                    if sort_key == cursor:
                        continue  # BETWEEN is inclusive; the cursor was the last page's end
                    if len(page) == page_size:
                        more = True
                        break
                    page.append(item)
                    position = sort_key
                if more:
                    break
                if index + 1 < len(days):
                    position = _day_first_key(days[index + 1], newest_first)
        except _PageCut:
            more = True
        next_cursor = position if more else None
        return [_stored(item) for item in page], next_cursor

    @staticmethod
    def cursor_fits(start_ns: int, end_ns: int, cursor: str) -> bool:
        """Whether ``cursor`` can be the end of a page of [start, end): a sort
        key (an occurred-at time, canonical, inside the range, then an event
        id, or a day's edge) as :meth:`list` returns them. No I/O: a forged
        page token is refused before it reaches DynamoDB."""
        match = _CURSOR.fullmatch(cursor)
        if match is None:
            return False
        try:
            moment = _parse_iso_ns(match["time"])
        except ValueError:
            return False
        return iso_ns(moment) == match["time"] and start_ns <= moment < end_ns

    def summary(self, start_ns: int, end_ns: int, *, budget: ReadBudget | None = None) -> Summary:
        """Totals over the rollup buckets that start in [floor(start), end):
        one Query per UTC day of the range (more pages only past 1 MB), so
        the cost follows the range, not the traffic. All or nothing: a
        budget's cancel or hard deadline stops it (:class:`ReadStopped`)."""
        budget = budget or ReadBudget()
        first = rollups.bucket_start_ns(start_ns, self._bucket_s)
        totals = rollups.Totals()
        reads = 0
        for day in self._days(first, end_ns, newest_first=False):
            low = rollups.rollup_key(max(first, _day_ns(day)), "", "", "")[1][:5]
            high = rollups.rollup_key(
                min(end_ns - 1, _day_ns(day) + 86_399 * _NS_PER_S), "", "", ""
            )[1][:5]
            kwargs: dict[str, Any] = {
                "TableName": self._rollup_table,
                "KeyConditionExpression": "#p = :p AND #s BETWEEN :lo AND :hi",
                "ExpressionAttributeNames": {
                    "#p": rollups.ROLLUP_PARTITION,
                    "#s": rollups.ROLLUP_SORT,
                },
                "ExpressionAttributeValues": {
                    ":p": {"S": f"r#{day}"},
                    ":lo": {"S": low},
                    ":hi": {"S": high + "$"},  # "$" sorts right after "#"
                },
            }
            while True:
                budget.charge()
                response = self._client.query(**kwargs)
                reads += 1
                for item in response.get("Items", []):
                    pk, sk = item[rollups.ROLLUP_PARTITION]["S"], item[rollups.ROLLUP_SORT]["S"]
                    bucket = rollups.parse_bucket_ns(pk, sk)
                    if first <= bucket < end_ns:
                        totals.add_item(item, bucket)
                last = response.get("LastEvaluatedKey")
                if not last:
                    break
                kwargs["ExclusiveStartKey"] = last
        return _summary(totals, self._bucket_s, first, end_ns, reads)


def rollup_table_for(table: str) -> str:
    """The rollup table's name when none is configured: the events table's + ``-rollups``."""
    return f"{table}-rollups"


def _day_ns(day: str) -> int:
    moment = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(moment.timestamp()) * _NS_PER_S


def _top(counter: Mapping[Any, int], n: int = _TOP) -> list[tuple[Any, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _summary(totals: rollups.Totals, bucket_s: int, start: int, end: int, reads: int) -> Summary:
    count = totals.event_count
    return Summary(
        event_count=count,
        error_count=sum(totals.errors.values()),
        top_skills=_top(totals.skills),
        mean_processing_ms=totals.processing_us / 1000 / count if count else 0.0,
        errors_by_code=sorted(totals.errors.items()),
        percentiles_ms=[(q, rollups.percentile_ms(totals.histogram, q)) for q in (0.5, 0.95, 0.99)],
        top_queries=_top(totals.queries),
        other_queries=totals.other_queries,
        models=[
            (model, events, totals.model_tokens[model])
            for model, events in _top(totals.model_events, n=len(totals.model_events))
        ],
        volume=[(b, v[0], v[1]) for b, v in sorted(totals.volume.items())],
        bucket_percentiles_ms={
            b: (
                rollups.percentile_ms(h, 0.5),
                rollups.percentile_ms(h, 0.95),
                rollups.percentile_ms(h, 0.99),
            )
            for b, h in totals.bucket_histograms.items()
        },
        bucket_s=bucket_s,
        covered_start_ns=start,
        # The last bucket of 9999-12-31 ends past the last time a Timestamp holds.
        covered_end_ns=min(
            rollups.bucket_start_ns(end - 1, bucket_s) + bucket_s * _NS_PER_S, TIME_MAX_NS
        ),
        reads=reads,
    )


def _message_id(batch_id: str, events: Sequence[analytics_pb2.AnalyticsEvent]) -> str:
    """The id a message claims its events under: its batch id (the FIFO
    de-duplication id, the same on every redelivery), or for a batch without
    one, a digest of its event ids (also the same on every redelivery)."""
    if batch_id:
        return batch_id
    digest = hashlib.sha256("\n".join(sorted(e.event_id.lower() for e in events)).encode())
    return "sha256:" + digest.hexdigest()[:32]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _capacity(consumed: Mapping[str, Any] | None) -> float:
    return float((consumed or {}).get("CapacityUnits", 0.0))


def _check_span(start_ns: int, end_ns: int) -> None:
    """ValueError unless [start, end) is a non-empty range of times reads serve."""
    if not TIME_MIN_NS <= start_ns < end_ns <= TIME_MAX_NS + 1:
        raise ValueError(f"[{start_ns}, {end_ns}) is not a range of times reads serve")


def _day_first_key(day: str, newest_first: bool) -> str:
    """The cursor before every item of ``day`` in listing order: a bound no
    item's sort key equals (after all of them, newest first)."""
    return f"{day}T23:59:59.999999999Z#~" if newest_first else f"{day}T00:00:00.000000000Z#"


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
