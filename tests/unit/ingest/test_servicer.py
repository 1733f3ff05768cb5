"""Unit tests for offpath.ingest.servicer: the AnalyticsIngest read API served by a real
grpc.aio server on loopback over a real EventStore on FakeDynamoDb, called through the
generated stub; plus resolve_range and the page token codec on their own."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from offpath.ingest import rollups
from offpath.ingest.servicer import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    BadRequest,
    IngestServicer,
    decode_token,
    encode_token,
    resolve_range,
)
from offpath.ingest.store import MAX_RANGE_DAYS, EventStore, create_table_request, rollup_table_for
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

TABLE = "events"
NS = 1_000_000_000
HOUR = 3_600 * NS
DAY = 24 * HOUR
DAY1 = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()) * NS
DAY2 = DAY1 + DAY
SECRET = "arn:aws:dynamodb:eu-west-1:123456789012:table/secret-internal-name"


@dataclass
class Api:
    """A served IngestServicer, its store and fake table, and a client stub."""

    ddb: FakeDynamoDb
    store: EventStore
    stub: ingest_pb2_grpc.AnalyticsIngestAsyncStub

    def write(self, events: Sequence[analytics_pb2.AnalyticsEvent], batch_id: str = "b-1") -> None:
        assert self.store.write([(batch_id, events)], ingested_ns=DAY2 + DAY) == len(events)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """A server on 127.0.0.1:<free port>; channel and server are closed afterwards."""
    ddb = FakeDynamoDb(page_items=3)  # small DynamoDB pages: the store must follow them
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    store = EventStore(ddb, TABLE, shards=4, sleep=lambda _: None)
    server = grpc.aio.server()
    ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(IngestServicer(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Api(ddb, store, ingest_pb2_grpc.AnalyticsIngestStub(channel))
    finally:
        await channel.close(None)
        await server.stop(None)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _event(event_id: str, occurred_ns: int, query: str = "") -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        producer_id="producer-1",
        query=query,
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    return event


def _token(data: object) -> str:
    """A token-shaped string (URL-safe base64 of JSON) with any content."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _ordered(events: Sequence[analytics_pb2.AnalyticsEvent], newest_first: bool) -> list[str]:
    ids = [
        e.event_id
        for e in sorted(events, key=lambda e: (e.occurred_at.ToNanoseconds(), e.event_id))
    ]
    return ids[::-1] if newest_first else ids


def _spread(
    count: int, seed: int, start_ns: int, span_ns: int
) -> list[analytics_pb2.AnalyticsEvent]:
    rng = random.Random(seed)
    return [_event(_uuid(rng), start_ns + rng.randrange(span_ns)) for _ in range(count)]


async def _status(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error an awaited call ended with (the test fails if it succeeded)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


class TestGetEvent:
    @pytest.mark.parametrize("event_id", ["", "nope", "0190a6f2-7a55-7cc1-9d2b", "x" * 500])
    async def test_bad_id_is_invalid_argument(self, api: Api, event_id: str) -> None:
        """An id that is not a UUID is rejected with a message saying so, without a lookup."""
        error = await _status(api.stub.GetEvent(ingest_pb2.GetEventRequest(event_id=event_id)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a UUID" in (error.details() or "")
        assert len(error.details() or "") < 200  # the id is quoted, truncated
        assert api.ddb.journal.of("get_item") == []

    async def test_unknown_id_is_not_found(self, api: Api) -> None:
        """A well-formed id that is not stored gives NOT_FOUND naming the id."""
        event_id = _uuid(random.Random(1))
        error = await _status(api.stub.GetEvent(ingest_pb2.GetEventRequest(event_id=event_id)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert event_id in (error.details() or "")

    async def test_stored_event_comes_back(self, api: Api) -> None:
        """A stored event is returned exactly, with its batch id and ingest time."""
        event = _event(_uuid(random.Random(2)), DAY1 + HOUR, query="hello")
        api.write([event], batch_id="batch-7")
        response = await api.stub.GetEvent(ingest_pb2.GetEventRequest(event_id=event.event_id))
        assert response.event == event
        assert response.batch_id == "batch-7"
        assert response.ingested_at.ToNanoseconds() == DAY2 + DAY

    async def test_id_is_trimmed_and_case_insensitive(self, api: Api) -> None:
        """Surrounding spaces and upper-case hex find the same (lower-case) event."""
        event = _event(_uuid(random.Random(3)), DAY1 + HOUR)
        api.write([event])
        request = ingest_pb2.GetEventRequest(event_id=f"  {event.event_id.upper()} ")
        response = await api.stub.GetEvent(request)
        assert response.event.event_id == event.event_id

    async def test_store_failure_is_unavailable_without_details(self, api: Api) -> None:
        """A failing store gives UNAVAILABLE (retryable) naming only the error type: no
        traceback, no internal message."""
        api.ddb.journal.inject("get_item", client_error("InternalServerError", SECRET, "GetItem"))
        request = ingest_pb2.GetEventRequest(event_id=_uuid(random.Random(4)))
        error = await _status(api.stub.GetEvent(request))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = error.details() or ""
        assert details == "event store unavailable: ClientError"
        assert "Traceback" not in details
        assert SECRET not in details


async def _list_all(api: Api, request: ingest_pb2.ListEventsRequest) -> list[list[str]]:
    """Every page of ``request``, following next_page_token with the same other fields."""
    pages: list[list[str]] = []
    while True:
        response = await api.stub.ListEvents(request)
        pages.append([event.event_id for event in response.events])
        if not response.next_page_token:
            return pages
        assert len(pages) < 500, "paging does not end"
        request = _next(request, response.next_page_token)


def _next(request: ingest_pb2.ListEventsRequest, token: str) -> ingest_pb2.ListEventsRequest:
    following = ingest_pb2.ListEventsRequest()
    following.CopyFrom(request)
    following.page_token = token
    return following


class TestListEvents:
    @pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
    @pytest.mark.parametrize("page_size", [1, 4, 25])
    async def test_pages_concatenate_to_the_range_in_order(
        self, api: Api, newest_first: bool, page_size: int
    ) -> None:
        """Following page tokens yields every event of the range once, in time order,
        across two days and every shard; events outside the range are left out."""
        inside = _spread(23, seed=page_size, start_ns=DAY2 - 6 * HOUR, span_ns=12 * HOUR)
        outside = [
            _event(_uuid(random.Random(90)), DAY2 - 6 * HOUR - 1),
            _event(_uuid(random.Random(91)), DAY2 + 6 * HOUR),
        ]
        api.write([*inside, *outside])
        request = ingest_pb2.ListEventsRequest(
            start_time=_ts(DAY2 - 6 * HOUR),
            end_time=_ts(DAY2 + 6 * HOUR),
            page_size=page_size,
            newest_first=newest_first,
        )
        pages = await _list_all(api, request)
        assert [event_id for page in pages for event_id in page] == _ordered(inside, newest_first)
        assert all(len(page) == page_size for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= page_size

    async def test_token_alone_continues_the_listing(self, api: Api) -> None:
        """A token carries its range: sent without start and end it gives the next page."""
        events = _spread(6, seed=5, start_ns=DAY1, span_ns=DAY)
        api.write(events)
        first = await api.stub.ListEvents(
            ingest_pb2.ListEventsRequest(start_time=_ts(DAY1), end_time=_ts(DAY2), page_size=4)
        )
        rest = await api.stub.ListEvents(
            ingest_pb2.ListEventsRequest(page_token=first.next_page_token, page_size=4)
        )
        listed = [e.event_id for e in first.events] + [e.event_id for e in rest.events]
        assert listed == _ordered(events, newest_first=False)
        assert rest.next_page_token == ""

    @pytest.mark.parametrize("change", ["start", "end", "order"])
    async def test_token_with_changed_fields_is_invalid(self, api: Api, change: str) -> None:
        """A token sent with another start, end or order is rejected, not silently mixed."""
        api.write(_spread(6, seed=6, start_ns=DAY1, span_ns=DAY))
        request = ingest_pb2.ListEventsRequest(
            start_time=_ts(DAY1), end_time=_ts(DAY2), page_size=2
        )
        first = await api.stub.ListEvents(request)
        assert first.next_page_token
        following = _next(request, first.next_page_token)
        if change == "start":
            following.start_time.CopyFrom(_ts(DAY1 + 1))
        elif change == "end":
            following.end_time.CopyFrom(_ts(DAY2 - 1))
        else:
            following.newest_first = True
        error = await _status(api.stub.ListEvents(following))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (error.details() or "")

    @pytest.mark.parametrize(
        "token",
        [
            "not a token!",
            "e30",  # {}
            base64.urlsafe_b64encode(b"[1, 2]").decode(),
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
            _token({"v": 2, "s": DAY1, "e": DAY2, "n": False, "c": "c"}),
        ],
        ids=["garbage", "empty-object", "a-list", "not-utf8", "other-version"],
    )
    async def test_garbage_token_is_invalid(self, api: Api, token: str) -> None:
        """A token this service did not issue is INVALID_ARGUMENT, without a store call."""
        error = await _status(api.stub.ListEvents(ingest_pb2.ListEventsRequest(page_token=token)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "page_token is not one this service issued"
        assert api.ddb.journal.of("query") == []

    @pytest.mark.parametrize(
        "token",
        [
            encode_token(DAY1, DAY2, False, "2020-01-01T00:00:00.000000000Z#x"),
            encode_token(DAY1, DAY2, False, "~~~~"),
            encode_token(DAY1, DAY1 + 400 * DAY, False, "2026-11-27T01:00:00.000000000Z#x"),
            encode_token(DAY2, DAY1, False, "2026-11-27T01:00:00.000000000Z#x"),
        ],
        ids=["cursor-before-range", "cursor-after-range", "range-too-long", "range-reversed"],
    )
    async def test_forged_token_is_invalid_not_unavailable(self, api: Api, token: str) -> None:
        """A well-formed token whose cursor lies outside its range, or whose range
        no request could ask for, is INVALID_ARGUMENT (not a retryable
        UNAVAILABLE from DynamoDB refusing the query), without a store call."""
        error = await _status(api.stub.ListEvents(ingest_pb2.ListEventsRequest(page_token=token)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("page_token is not one this service issued")
        assert api.ddb.journal.of("query") == []

    @pytest.mark.parametrize("page_size", [-1, MAX_PAGE_SIZE + 1])
    async def test_page_size_out_of_bounds_is_invalid(self, api: Api, page_size: int) -> None:
        """page_size outside 1..1000 is rejected with the bounds in the message."""
        request = ingest_pb2.ListEventsRequest(page_size=page_size)
        error = await _status(api.stub.ListEvents(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"between 1 and {MAX_PAGE_SIZE}" in (error.details() or "")

    @pytest.mark.parametrize(
        ("page_size", "expected"),
        [(0, DEFAULT_PAGE_SIZE), (1, 1), (MAX_PAGE_SIZE, 60)],
        ids=["unset-is-default", "smallest", "largest"],
    )
    async def test_page_size_bounds_are_honoured(
        self, api: Api, page_size: int, expected: int
    ) -> None:
        """0 means the default page of 50; 1 and 1000 are accepted as given."""
        api.write(_spread(60, seed=7, start_ns=DAY1, span_ns=DAY))
        request = ingest_pb2.ListEventsRequest(
            start_time=_ts(DAY1), end_time=_ts(DAY2), page_size=page_size
        )
        response = await api.stub.ListEvents(request)
        assert len(response.events) == expected
        assert bool(response.next_page_token) == (expected < 60)

    async def test_default_range_is_the_last_24_hours(self, api: Api) -> None:
        """Without start and end, events of the last 24 hours are listed, older and future
        ones are not."""
        now = time.time_ns()
        rng = random.Random(8)
        recent = [_event(_uuid(rng), now - HOUR), _event(_uuid(rng), now - 23 * HOUR)]
        old = _event(_uuid(rng), now - 25 * HOUR)
        future = _event(_uuid(rng), now + HOUR)
        api.write([*recent, old, future])
        response = await api.stub.ListEvents(ingest_pb2.ListEventsRequest())
        assert [e.event_id for e in response.events] == _ordered(recent, newest_first=False)

    async def test_end_alone_starts_24_hours_earlier(self, api: Api) -> None:
        """With only end_time, the range is the 24 hours before it."""
        rng = random.Random(9)
        inside = _event(_uuid(rng), DAY2 - HOUR)
        before = _event(_uuid(rng), DAY1 - 1)
        api.write([inside, before])
        response = await api.stub.ListEvents(ingest_pb2.ListEventsRequest(end_time=_ts(DAY2)))
        assert [e.event_id for e in response.events] == [inside.event_id]

    @pytest.mark.parametrize(
        ("start", "end", "message"),
        [
            (DAY2, DAY2, "start_time must be before end_time"),
            (DAY2, DAY1, "start_time must be before end_time"),
            (DAY1, DAY1 + MAX_RANGE_DAYS * DAY + 1, f"more than {MAX_RANGE_DAYS} days"),
            (-100 * NS, 100 * NS, "before 1970"),
        ],
        ids=["empty", "reversed", "too-long", "before-1970"],
    )
    async def test_bad_ranges_are_invalid(
        self, api: Api, start: int, end: int, message: str
    ) -> None:
        """A range that is empty, reversed, longer than 31 days or before 1970 is rejected
        with a message that says what to change, for ListEvents and GetSummary alike."""
        list_request = ingest_pb2.ListEventsRequest(start_time=_ts(start), end_time=_ts(end))
        summary_request = ingest_pb2.GetSummaryRequest(start_time=_ts(start), end_time=_ts(end))
        for call in (api.stub.ListEvents(list_request), api.stub.GetSummary(summary_request)):
            error = await _status(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (error.details() or "")
        assert api.ddb.journal.of("query") == []

    async def test_store_failure_is_unavailable_without_details(self, api: Api) -> None:
        """A failing query gives UNAVAILABLE naming only the error type, no traceback."""
        api.ddb.journal.inject("query", client_error("InternalServerError", SECRET, "Query"))
        request = ingest_pb2.ListEventsRequest(start_time=_ts(DAY1), end_time=_ts(DAY2))
        error = await _status(api.stub.ListEvents(request))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = error.details() or ""
        assert details == "event store unavailable: ClientError"
        assert "Traceback" not in details
        assert SECRET not in details


class TestGetSummary:
    async def test_totals_over_the_range(self, api: Api) -> None:
        """The summary counts events and errors, averages processing time and ranks skills
        over the range only."""
        rng = random.Random(10)
        events = []
        for i in range(4):
            event = _event(_uuid(rng), DAY1 + i * HOUR)
            event.status_code = 13 if i == 0 else 0
            event.processing_time.FromNanoseconds((i + 1) * 2_000_000)
            event.matched_skills.add(name="Go" if i % 2 else "Rust", score=0.5)
            events.append(event)
        api.write([*events, _event(_uuid(rng), DAY2 + HOUR)])
        response = await api.stub.GetSummary(
            ingest_pb2.GetSummaryRequest(start_time=_ts(DAY1), end_time=_ts(DAY2))
        )
        assert (response.event_count, response.error_count) == (4, 1)
        assert response.mean_processing_ms == pytest.approx(5.0)
        assert [(s.name, s.count) for s in response.top_skills] == [("Go", 2), ("Rust", 2)]

    async def test_each_volume_bucket_has_its_own_percentiles(self, api: Api) -> None:
        """Every volume bucket carries the p50/p95/p99 of its own events (within the
        stated error), not the whole range's: a slow hour and a fast hour differ."""
        rng = random.Random(11)
        events = []
        for hour, base_ms in ((0, 1), (2, 40)):
            for i in range(100):
                event = _event(_uuid(rng), DAY1 + hour * HOUR + i * NS)
                # 1..100 times the base: p50 = 50x, p95 = 95x, p99 = 99x.
                event.processing_time.FromNanoseconds((i + 1) * base_ms * 1_000_000)
                events.append(event)
        api.write(events)
        response = await api.stub.GetSummary(
            ingest_pb2.GetSummaryRequest(start_time=_ts(DAY1), end_time=_ts(DAY2))
        )
        error = response.processing_ms_relative_error
        assert [b.start_time.ToNanoseconds() for b in response.volume] == [DAY1, DAY1 + 2 * HOUR]
        for bucket, base_ms in zip(response.volume, (1, 40), strict=True):
            assert bucket.event_count == 100
            for got, factor in (
                (bucket.p50_processing_ms, 50),
                (bucket.p95_processing_ms, 95),
                (bucket.p99_processing_ms, 99),
            ):
                assert got == pytest.approx(factor * base_ms, rel=error)
        # The range's p99 is the slow hour's (about 3,960 ms): the fast hour's
        # p99 (99 ms) is its own, not the range's.
        assert response.volume[0].p99_processing_ms < response.p99_processing_ms / 10

    async def test_store_failure_is_unavailable(self, api: Api) -> None:
        """A failing query during a summary gives UNAVAILABLE, no traceback."""
        api.ddb.journal.inject("query", RuntimeError(SECRET))
        request = ingest_pb2.GetSummaryRequest(start_time=_ts(DAY1), end_time=_ts(DAY2))
        error = await _status(api.stub.GetSummary(request))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "event store unavailable: RuntimeError"


class TestResolveRange:
    NOW = DAY2 + 5 * HOUR

    def test_defaults_are_the_24_hours_before_now(self) -> None:
        """No start and no end: [now - 24 h, now)."""
        assert resolve_range(None, None, self.NOW) == (self.NOW - DAY, self.NOW)

    def test_end_alone_starts_a_day_before(self) -> None:
        """Only an end: [end - 24 h, end), whatever now is."""
        assert resolve_range(None, _ts(DAY2), self.NOW) == (DAY1, DAY2)

    def test_start_alone_ends_now(self) -> None:
        """Only a start: [start, now)."""
        assert resolve_range(_ts(DAY1), None, self.NOW) == (DAY1, self.NOW)

    def test_exactly_the_longest_range_is_allowed(self) -> None:
        """A range of exactly 31 days is accepted; one nanosecond more is not."""
        end = DAY1 + MAX_RANGE_DAYS * DAY
        assert resolve_range(_ts(DAY1), _ts(end), self.NOW) == (DAY1, end)
        with pytest.raises(BadRequest, match="narrow it"):
            resolve_range(_ts(DAY1), _ts(end + 1), self.NOW)

    @pytest.mark.parametrize(
        ("start", "end", "message"),
        [
            (DAY2, DAY2, "before end_time"),
            (DAY2 + 1, DAY2, "before end_time"),
            (-1, HOUR, "1970"),
        ],
        ids=["empty", "reversed", "before-1970"],
    )
    def test_bad_ranges_raise(self, start: int, end: int, message: str) -> None:
        """Empty, reversed and pre-1970 ranges raise BadRequest saying which."""
        with pytest.raises(BadRequest, match=message):
            resolve_range(_ts(start), _ts(end), self.NOW)

    def test_start_after_now_with_default_end_is_rejected(self) -> None:
        """A start in the future with no end is an empty range, so it is rejected."""
        with pytest.raises(BadRequest, match="before end_time"):
            resolve_range(_ts(self.NOW + 1), None, self.NOW)


class TestPageToken:
    @pytest.mark.parametrize("newest_first", [False, True])
    def test_round_trip(self, newest_first: bool) -> None:
        """decode_token gives back exactly what encode_token was given."""
        cursor = "2026-11-27T05:00:00.123456789Z#0190a6f2-7a55-7cc1-9d2b-1a2b3c4d5e6f"
        token = encode_token(DAY1, DAY2, newest_first, cursor)
        assert decode_token(token) == (DAY1, DAY2, newest_first, cursor)

    def test_token_is_url_safe_without_padding(self) -> None:
        """Tokens use only URL-safe base64 characters and no '=' padding."""
        for length in range(1, 8):
            token = encode_token(DAY1, DAY2, False, "x" * length)
            assert set(token) <= set(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            )
            assert decode_token(token)[3] == "x" * length

    @pytest.mark.parametrize(
        "token",
        [
            "",
            "%%%",
            "e30",
            base64.urlsafe_b64encode(b"null").decode(),
            _token({"v": 2, "s": 1, "e": 2, "n": False, "c": ""}),
            _token({"v": 1, "s": "x", "e": 2, "n": False, "c": ""}),
            _token({"v": 1, "e": 2, "n": False, "c": ""}),
        ],
        ids=["empty", "not-base64", "empty-object", "null", "version-2", "bad-number", "missing"],
    )
    def test_foreign_tokens_raise_bad_request(self, token: str) -> None:
        """Anything but a token this service issued raises BadRequest, never another error."""
        with pytest.raises(BadRequest, match="page_token"):
            decode_token(token)
