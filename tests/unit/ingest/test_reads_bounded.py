"""Unit tests for the read API's bounds: page tokens and times checked before
any DynamoDB call, the work of one call bounded, reads stopped when their
caller goes away or their time runs out, and GetEvent never waiting behind
range reads. A real grpc.aio server on loopback over a real EventStore on
FakeDynamoDb (its read hook makes reads slow or holds them), and the store's
listing on its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from offpath.ingest import rollups
from offpath.ingest.servicer import (
    MAX_TOKEN_CHARS,
    BadRequest,
    IngestServicer,
    ReadLimits,
    list_arguments,
)
from offpath.ingest.store import (
    MAX_RANGE_DAYS,
    TIME_MAX_NS,
    EventStore,
    ReadBudget,
    ReadStopped,
    create_table_request,
    iso_ns,
    rollup_table_for,
)
from offpath.testing.calls import client_error
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.waits import eventually
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

TABLE = "events"
SHARDS = 4
NS = 1_000_000_000
HOUR = 3_600 * NS
DAY = 24 * HOUR
DAY1 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * NS
YEAR_10000_S = 253_402_300_800  # 10000-01-01T00:00:00Z
RANGE_MESSAGE = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z"
FOREIGN = "page_token is not one this service issued"


class Gate:
    """A read hook that holds every call of one operation (Query unless
    told) until opened."""

    def __init__(self, operation: str = "query") -> None:
        self.operation = operation
        self.opened = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def __call__(self, operation: str, _request: Mapping[str, Any]) -> None:
        if operation != self.operation:
            return
        with self._lock:
            self.waiting += 1
        try:
            assert self.opened.wait(10), "the gate was never opened"
        finally:
            with self._lock:
                self.waiting -= 1


class TracedStore(EventStore):
    """An EventStore that tells when each range read's worker has ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: list[str] = []

    def list(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().list(*args, **kwargs)
        finally:
            self.ended.append("list")

    def summary(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().summary(*args, **kwargs)
        finally:
            self.ended.append("summary")


@dataclass
class Api:
    ddb: FakeDynamoDb
    store: TracedStore
    stub: ingest_pb2_grpc.AnalyticsIngestAsyncStub
    servicer: IngestServicer
    logs: list[Any] = field(default_factory=list)

    def queries(self) -> int:
        return len(self.ddb.journal.of("query"))


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def serve() -> AsyncIterator[ApiFactory]:
    """Starts servers on 127.0.0.1:<free port> (stopped, channels closed,
    read threads shut down afterwards)."""
    closers: list[Callable[[], Awaitable[None]]] = []

    async def start(
        limits: ReadLimits | None = None,
        read_hook: Callable[[str, Mapping[str, Any]], None] | None = None,
        page_items: int = 1000,
    ) -> Api:
        ddb = FakeDynamoDb(page_items=page_items, read_hook=read_hook)
        ddb.create_table(**create_table_request(TABLE))
        ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
        store = TracedStore(ddb, TABLE, shards=SHARDS, sleep=lambda _: None)
        servicer = IngestServicer(store, summary_max_days=MAX_RANGE_DAYS, limits=limits)
        server = grpc.aio.server()
        ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

        async def close() -> None:
            await channel.close(None)
            await server.stop(None)
            servicer.close()

        closers.append(close)
        return Api(ddb, store, ingest_pb2_grpc.AnalyticsIngestStub(channel), servicer)

    yield start
    for close in reversed(closers):
        await close()


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _event(event_id: str, occurred_ns: int) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        producer_id="producer-1",
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    return event


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _ts_ns(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _raw_token(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _raw_text_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def _status(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


EVENT_ID = "0190a6f2-7a55-7cc1-9d2b-1a2b3c4d5e6f"
CURSOR = f"{iso_ns(DAY1 + HOUR)}#{EVENT_ID}"
GOOD = {"v": 1, "s": DAY1, "e": DAY1 + DAY, "n": False, "c": CURSOR}


def _with(**changes: object) -> dict[str, object]:
    return {**GOOD, **changes}


FORGED_TOKENS = {
    # the range
    "range-over-31-days": _raw_token(_with(e=DAY1 + (MAX_RANGE_DAYS + 1) * DAY)),
    "end-in-year-10000": _raw_token(_with(e=YEAR_10000_S * NS + HOUR)),
    "both-in-year-10000": _raw_token(
        _with(s=YEAR_10000_S * NS, e=YEAR_10000_S * NS + HOUR, c="10000-01-01T00:00:00Z#")
    ),
    "start-before-1970": _raw_token(_with(s=-DAY)),
    "huge-ints": _raw_token(_with(s=10**300, e=10**301)),
    "huge-negative": _raw_token(_with(s=-(10**300))),
    "empty-range": _raw_token(_with(e=DAY1)),
    # the types
    "float-start": _raw_token(_with(s=float(DAY1))),
    "string-start": _raw_token(_with(s=str(DAY1))),
    "bool-end": _raw_token(_with(e=True)),
    "int-order": _raw_token(_with(n=0)),
    "null-cursor": _raw_token(_with(c=None)),
    "list-cursor": _raw_token(_with(c=[CURSOR])),
    "bool-version": _raw_token(_with(v=True)),
    "extra-key": _raw_token(_with(x=1)),
    "missing-key": _raw_token({k: v for k, v in GOOD.items() if k != "c"}),
    "infinity": _raw_text_token(json.dumps(GOOD).replace(str(DAY1 + DAY), "Infinity")),
    "nan": _raw_text_token(json.dumps(GOOD).replace(str(DAY1 + DAY), "NaN")),
    "deep-nesting": _raw_text_token("[" * 300 + "]" * 300),
    "too-long": _raw_token(_with(c=CURSOR + "0" * MAX_TOKEN_CHARS)),
    "padding-and-spaces": _raw_token(GOOD) + "== ",
    # the cursor
    "cursor-before-range": _raw_token(_with(c=f"{iso_ns(DAY1 - 1)}#{EVENT_ID}")),
    "cursor-at-end": _raw_token(_with(c=f"{iso_ns(DAY1 + DAY)}#")),
    "cursor-not-a-time": _raw_token(_with(c="2026-11-01T25:61:00.000000000Z#")),
    "cursor-short-time": _raw_token(_with(c="2026-11-01T01#")),
    "cursor-upper-case-id": _raw_token(_with(c=CURSOR.upper())),
    "cursor-foreign-characters": _raw_token(_with(c=f"{iso_ns(DAY1 + HOUR)}#a b")),
    "cursor-long-id": _raw_token(_with(c=CURSOR + "-0000")),
    "cursor-empty": _raw_token(_with(c="")),
}


class TestForgedTokens:
    @pytest.mark.parametrize("token", FORGED_TOKENS.values(), ids=FORGED_TOKENS.keys())
    async def test_forged_token_is_invalid_before_any_read(
        self, serve: ApiFactory, token: str
    ) -> None:
        """Whatever a forged token holds (a range no request may ask for, years
        past 9999, wrong JSON types, a cursor outside its range or not one
        the store writes), the answer is INVALID_ARGUMENT and DynamoDB is not
        called."""
        api = await serve()
        error = await _status(api.stub.ListEvents(ingest_pb2.ListEventsRequest(page_token=token)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert (error.details() or "").startswith(FOREIGN)
        assert api.queries() == 0

    async def test_token_range_out_of_bounds_names_the_range(self, serve: ApiFactory) -> None:
        """A token's time past 9999 is refused naming the times served."""
        api = await serve()
        token = FORGED_TOKENS["end-in-year-10000"]
        error = await _status(api.stub.ListEvents(ingest_pb2.ListEventsRequest(page_token=token)))
        assert RANGE_MESSAGE in (error.details() or "")

    async def test_issued_token_is_accepted(self, serve: ApiFactory) -> None:
        """The contrast: the same schema with in-range values reads on."""
        api = await serve()
        response = await api.stub.ListEvents(
            ingest_pb2.ListEventsRequest(page_token=_raw_token(GOOD))
        )
        assert list(response.events) == []
        assert api.queries() > 0

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.dictionaries(
            st.sampled_from(["v", "s", "e", "n", "c", "x"]),
            st.one_of(
                st.integers(min_value=-(10**40), max_value=10**40),
                st.integers(min_value=DAY1 - DAY, max_value=DAY1 + 2 * DAY),
                st.booleans(),
                st.none(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=80),
                st.just(CURSOR),
                st.just(1),
            ),
        )
    )
    def test_any_token_content_is_a_bad_request_or_fits(self, data: dict[str, Any]) -> None:
        """Any JSON object as a token gives BadRequest or arguments a fresh
        request could give: a range in 1970..9999 of at most 31 days, its
        cursor a sort key inside it."""
        request = ingest_pb2.ListEventsRequest(page_token=_raw_token(data))
        request.newest_first = bool(data.get("n")) if isinstance(data.get("n"), bool) else False
        try:
            args = list_arguments(request, DAY1)
        except BadRequest:
            return
        assert 0 <= args.start_ns < args.end_ns <= TIME_MAX_NS
        assert args.end_ns - args.start_ns <= MAX_RANGE_DAYS * DAY
        assert args.cursor is not None
        assert EventStore.cursor_fits(args.start_ns, args.end_ns, args.cursor)

    @settings(max_examples=300, deadline=None)
    @given(token=st.text(max_size=600))
    def test_any_token_text_is_a_bad_request(self, token: str) -> None:
        """Arbitrary text as a token is BadRequest (or, by chance, a valid
        token), never another exception."""
        request = ingest_pb2.ListEventsRequest(page_token=token)
        with contextlib.suppress(BadRequest):
            list_arguments(request, DAY1)


OUT_OF_RANGE = {
    "start-year-10000": (_ts(YEAR_10000_S), None, "start_time is after the year 9999"),
    "end-year-10000": (None, _ts(YEAR_10000_S + 3600), "end_time is after the year 9999"),
    "end-int64-max": (None, _ts(2**63 - 1), "end_time is after the year 9999"),
    "start-year-1": (_ts(-62_135_596_800), _ts(0, 1), "start_time is before 1970"),
    "start-negative-nanos": (_ts(1_000, -1), None, "start_time.nanos is -1"),
    "end-nanos-a-second": (None, _ts(1_000, NS), "end_time.nanos is 1000000000"),
}


class TestRequestTimes:
    @pytest.mark.parametrize(
        ("start", "end", "message"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys()
    )
    async def test_out_of_range_times_are_invalid_argument(
        self,
        serve: ApiFactory,
        start: timestamp_pb2.Timestamp | None,
        end: timestamp_pb2.Timestamp | None,
        message: str,
    ) -> None:
        """A time past 9999, before 1970 or with nanos outside 0..999999999 is
        INVALID_ARGUMENT saying which field and what is allowed, for
        ListEvents and GetSummary alike, and with a page token too; never
        UNAVAILABLE, and DynamoDB is not called."""
        api = await serve()
        for kind in (ingest_pb2.ListEventsRequest, ingest_pb2.GetSummaryRequest):
            request = kind()
            if start is not None:
                request.start_time.CopyFrom(start)
            if end is not None:
                request.end_time.CopyFrom(end)
            call = (
                api.stub.ListEvents(request)
                if isinstance(request, ingest_pb2.ListEventsRequest)
                else api.stub.GetSummary(request)
            )
            error = await _status(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert message in (error.details() or "")
            if "nanos" not in message:
                assert RANGE_MESSAGE in (error.details() or "")
        with_token = ingest_pb2.ListEventsRequest(page_token=_raw_token(GOOD))
        if start is not None:
            with_token.start_time.CopyFrom(start)
        if end is not None:
            with_token.end_time.CopyFrom(end)
        error = await _status(api.stub.ListEvents(with_token))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (error.details() or "")
        assert api.queries() == 0

    async def test_the_last_day_served_is_read(self, serve: ApiFactory) -> None:
        """A range ending at the last nanosecond of 9999-12-31 is served (no
        overflow past the last day): ListEvents finds its event, GetSummary
        counts it, covering up to the last time a Timestamp holds."""
        api = await serve()
        end = TIME_MAX_NS
        event = _event(_uuid(random.Random(1)), end - HOUR)
        api.store.write([("b-1", [event])], ingested_ns=DAY1)
        listed = await api.stub.ListEvents(
            ingest_pb2.ListEventsRequest(start_time=_ts_ns(end - DAY), end_time=_ts_ns(end))
        )
        assert [e.event_id for e in listed.events] == [event.event_id]
        summary = await api.stub.GetSummary(
            ingest_pb2.GetSummaryRequest(start_time=_ts_ns(end - DAY), end_time=_ts_ns(end))
        )
        assert summary.event_count == 1
        assert summary.covered_end_time.ToNanoseconds() == TIME_MAX_NS


def _page_all(
    store: EventStore,
    start: int,
    end: int,
    *,
    page_size: int,
    newest_first: bool,
    budget: Callable[[], ReadBudget],
) -> tuple[list[list[str]], list[int]]:
    """Every page (event ids) and the Queries each page made."""
    pages: list[list[str]] = []
    costs: list[int] = []
    cursor = None
    while True:
        spend = budget()
        page, cursor = store.list(
            start, end, page_size=page_size, newest_first=newest_first, cursor=cursor, budget=spend
        )
        pages.append([s.event.event_id for s in page])
        costs.append(spend.requests)
        if cursor is None:
            return pages, costs
        assert len(pages) < 1000, "paging does not end"


class TestListBudget:
    def _store(self, page_items: int = 1000) -> tuple[FakeDynamoDb, EventStore]:
        ddb = FakeDynamoDb(page_items=page_items)
        ddb.create_table(**create_table_request(TABLE))
        ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
        return ddb, EventStore(ddb, TABLE, shards=SHARDS, sleep=lambda _: None)

    def test_sparse_31_days_are_read_over_pages_within_budget(self) -> None:
        """An empty 31-day range is not one call of 124 Queries: each page
        stops after its budget with a next cursor, every day is read once in
        all, and the last page ends the listing."""
        ddb, store = self._store()
        start, end = DAY1, DAY1 + MAX_RANGE_DAYS * DAY
        pages, costs = _page_all(
            store,
            start,
            end,
            page_size=50,
            newest_first=False,
            budget=lambda: ReadBudget(max_requests=32),
        )
        assert all(page == [] for page in pages)
        assert max(costs) <= 32
        assert len(pages) == 4  # 31 days x 4 shards = 124 Queries, 32 a page
        partitions = [q["ExpressionAttributeValues"][":p"]["S"] for q in ddb.journal.of("query")]
        assert len(partitions) == len(set(partitions)) == MAX_RANGE_DAYS * SHARDS

    @pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
    @pytest.mark.parametrize("max_requests", [1, 3, 5, 9, 40])
    @pytest.mark.parametrize("page_items", [2, 1000])
    def test_pages_cut_by_the_budget_still_list_every_event_once(
        self, newest_first: bool, max_requests: int, page_items: int
    ) -> None:
        """However small the budget (down to one Query) and however DynamoDB
        pages its answers, pages cut short still make progress and
        concatenate to every event of the range once, in order."""
        _, store = self._store(page_items=page_items)
        rng = random.Random(max_requests * 31 + page_items)
        start, end = DAY1, DAY1 + 6 * DAY
        # Clusters and gaps: some days empty, some busy, some ties in time.
        times = [DAY1 + d * DAY + rng.randrange(DAY) for d in (0, 0, 2, 5) for _ in range(7)]
        times += [DAY1 + 3 * DAY + HOUR] * 3
        events = [_event(_uuid(rng), t) for t in times]
        store.write([("b-1", events)], ingested_ns=DAY1)
        pages, costs = _page_all(
            store,
            start,
            end,
            page_size=4,
            newest_first=newest_first,
            budget=lambda: ReadBudget(max_requests=max_requests),
        )
        expected = [
            e.event_id
            for e in sorted(events, key=lambda e: (e.occurred_at.ToNanoseconds(), e.event_id))
        ]
        listed = [event_id for page in pages for event_id in page]
        assert listed == (expected[::-1] if newest_first else expected)
        assert all(len(page) <= 4 for page in pages)
        # Past the budget only the Queries needed to make progress: a day's
        # first round and one more page of the cursor's shard.
        assert max(costs) <= max(max_requests, SHARDS + 1)

    def test_soft_deadline_cuts_the_page(self) -> None:
        """Once the soft deadline has passed the page ends at its first
        progress, with a cursor to go on from."""
        _, store = self._store()
        budget = ReadBudget(soft_deadline=5.0, clock=lambda: 10.0)
        page, cursor = store.list(DAY1, DAY1 + 10 * DAY, page_size=10, budget=budget)
        assert page == []
        assert cursor == f"{iso_ns(DAY1 + DAY)}#"  # before the second day
        assert budget.requests == SHARDS
        page, cursor = store.list(
            DAY1, DAY1 + 10 * DAY, page_size=10, newest_first=True, budget=budget
        )
        assert page == []
        assert cursor == f"{iso_ns(DAY1 + 9 * DAY - 1)}#~"  # after the ninth day

    def test_cursor_day_onwards_only(self) -> None:
        """A page after a cursor on day 20 queries day 20 onwards, not the 19
        days before it again."""
        ddb, store = self._store()
        cursor = f"{iso_ns(DAY1 + 19 * DAY + HOUR)}#{uuid.UUID(int=3)}"
        store.list(DAY1, DAY1 + 25 * DAY, page_size=10, cursor=cursor)
        days = {q["ExpressionAttributeValues"][":p"]["S"][:10] for q in ddb.journal.of("query")}
        first = datetime.fromtimestamp((DAY1 + 19 * DAY) // NS, UTC).strftime("%Y-%m-%d")
        assert min(days) == first
        assert len(days) == 6

    def test_cancel_and_hard_deadline_stop_before_the_next_query(self) -> None:
        """A cancelled budget, or one past its hard deadline, stops the
        listing and the summary before their next DynamoDB request."""
        ddb, store = self._store()
        cancelled = ReadBudget()
        cancelled.cancel()
        with pytest.raises(ReadStopped, match="cancelled"):
            store.list(DAY1, DAY1 + DAY, page_size=10, budget=cancelled)
        with pytest.raises(ReadStopped, match="cancelled"):
            store.summary(DAY1, DAY1 + DAY, budget=cancelled)
        late = ReadBudget(hard_deadline=time.monotonic() - 1)
        with pytest.raises(ReadStopped, match="deadline"):
            store.list(DAY1, DAY1 + DAY, page_size=10, budget=late)
        with pytest.raises(ReadStopped, match="deadline"):
            store.get(str(uuid.UUID(int=1)), budget=late)
        assert ddb.journal.calls == [c for c in ddb.journal.calls if c.operation != "query"]
        assert ddb.journal.of("get_item") == []


class TestServerBudget:
    async def test_sparse_month_pages_with_tokens(self, serve: ApiFactory) -> None:
        """Over the wire, an empty 31-day range answers pages of at most the
        Query budget, each with a next token, until the range is done."""
        api = await serve(limits=ReadLimits(list_requests=20))
        request = ingest_pb2.ListEventsRequest(
            start_time=_ts_ns(DAY1), end_time=_ts_ns(DAY1 + MAX_RANGE_DAYS * DAY)
        )
        calls = 0
        while True:
            before = api.queries()
            response = await api.stub.ListEvents(request, timeout=5)
            calls += 1
            assert api.queries() - before <= 20
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        assert calls == 7  # 31 days x 4 shards, 5 days a page
        assert api.queries() == MAX_RANGE_DAYS * SHARDS

    async def test_slow_store_page_ends_before_the_deadline(self, serve: ApiFactory) -> None:
        """On a slow store (20 ms a Query) a month's page given 0.5 s ends
        early with what it read and a next token, not DEADLINE_EXCEEDED."""
        api = await serve(read_hook=lambda op, _: time.sleep(0.02) if op == "query" else None)
        started = time.monotonic()
        response = await api.stub.ListEvents(
            ingest_pb2.ListEventsRequest(
                start_time=_ts_ns(DAY1), end_time=_ts_ns(DAY1 + MAX_RANGE_DAYS * DAY)
            ),
            timeout=0.5,
        )
        assert time.monotonic() - started < 0.5
        assert response.next_page_token
        assert api.queries() < MAX_RANGE_DAYS * SHARDS


class TestCancellation:
    @pytest.mark.parametrize("how", ["deadline", "cancel"])
    @pytest.mark.parametrize("rpc", ["ListEvents", "GetSummary"])
    async def test_reads_stop_when_the_caller_goes(
        self, serve: ApiFactory, how: str, rpc: str
    ) -> None:
        """When the client's deadline passes or it cancels, the read makes no
        DynamoDB request after the one in flight: held at its first Query,
        a 31-day read ends there once the Query returns."""
        gate = Gate()
        api = await serve(read_hook=gate)
        start, end = _ts_ns(DAY1), _ts_ns(DAY1 + MAX_RANGE_DAYS * DAY)
        timeout = 0.2 if how == "deadline" else None
        call = (
            api.stub.ListEvents(
                ingest_pb2.ListEventsRequest(start_time=start, end_time=end), timeout=timeout
            )
            if rpc == "ListEvents"
            else api.stub.GetSummary(
                ingest_pb2.GetSummaryRequest(start_time=start, end_time=end), timeout=timeout
            )
        )
        await eventually(lambda: gate.waiting == 1)
        with capture_logs() as logs:
            if how == "cancel":
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            else:
                error = await _status(call)
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server has told the worker (it logs once it has).
            await eventually(
                lambda: any(line["event"] in ("read_cancelled", "read_deadline") for line in logs)
            )
        in_flight = api.queries()
        gate.opened.set()
        await eventually(lambda: len(api.store.ended) == 1)
        assert api.queries() == in_flight == 1

    async def test_server_cap_answers_deadline_exceeded(self, serve: ApiFactory) -> None:
        """Without a client deadline the server's cap ends the call with
        DEADLINE_EXCEEDED saying what to do, even while a Query hangs; the
        read stops once the Query returns."""
        gate = Gate()
        api = await serve(limits=ReadLimits(time_cap_s=0.2), read_hook=gate)
        started = time.monotonic()
        error = await _status(
            api.stub.GetSummary(
                ingest_pb2.GetSummaryRequest(
                    start_time=_ts_ns(DAY1), end_time=_ts_ns(DAY1 + 20 * DAY)
                )
            )
        )
        assert time.monotonic() - started < 2
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "narrow the time range" in (error.details() or "")
        gate.opened.set()
        await eventually(lambda: len(api.store.ended) == 1)
        assert api.queries() == 1

    async def test_get_event_held_in_dynamodb_answers_at_its_deadline(
        self, serve: ApiFactory
    ) -> None:
        """A GetItem that hangs does not hold the client past its deadline
        (nor past the server's cap when it sets none)."""
        gate = Gate("get_item")
        api = await serve(limits=ReadLimits(time_cap_s=0.3), read_hook=gate)
        request = ingest_pb2.GetEventRequest(event_id=EVENT_ID)
        for timeout in (0.1, None):
            started = time.monotonic()
            error = await _status(api.stub.GetEvent(request, timeout=timeout))
            assert time.monotonic() - started < 1
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "allow longer" in (error.details() or "")
        gate.opened.set()


class TestNoStarvation:
    async def test_get_event_answers_while_range_reads_hang(self, serve: ApiFactory) -> None:
        """Six ListEvents held in DynamoDB: four are worked on, two are told
        RESOURCE_EXHAUSTED after a short wait, and GetEvent still answers at
        once. Turns come back only when the workers really stop, so calls
        cancelled while their Query hangs still hold them."""
        gate = Gate()
        api = await serve(limits=ReadLimits(range_reads=4, range_queue_s=0.1), read_hook=gate)
        event = _event(_uuid(random.Random(5)), DAY1 + HOUR)
        api.store.write([("b-1", [event])], ingested_ns=DAY1)
        request = ingest_pb2.ListEventsRequest(
            start_time=_ts_ns(DAY1), end_time=_ts_ns(DAY1 + MAX_RANGE_DAYS * DAY)
        )
        slow = [api.stub.ListEvents(request, timeout=5) for _ in range(4)]
        await eventually(lambda: gate.waiting == 4)
        refused = await asyncio.gather(
            *(_status(api.stub.ListEvents(request, timeout=5)) for _ in range(2))
        )
        assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert "retry" in (refused[0].details() or "")

        started = time.monotonic()
        got = await api.stub.GetEvent(ingest_pb2.GetEventRequest(event_id=event.event_id))
        assert time.monotonic() - started < 0.5
        assert got.event.event_id == event.event_id

        for call in slow:
            call.cancel()
        # The handlers are gone but their Queries still hang: no turn is free.
        error = await _status(api.stub.ListEvents(request, timeout=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.opened.set()
        await eventually(lambda: len(api.store.ended) == 4)
        response = await api.stub.ListEvents(request, timeout=5)
        assert [e.event_id for e in response.events] == [event.event_id]


class TestStoreFailures:
    async def test_expected_failure_is_one_log_line(self, serve: ApiFactory) -> None:
        """A DynamoDB error is UNAVAILABLE to the client and one warning line
        in the log (operation, error type and code; no traceback)."""
        api = await serve()
        api.ddb.journal.inject("query", client_error("ThrottlingException", "slow", "Query"))
        with capture_logs() as logs:
            error = await _status(
                api.stub.GetSummary(
                    ingest_pb2.GetSummaryRequest(
                        start_time=_ts_ns(DAY1), end_time=_ts_ns(DAY1 + DAY)
                    )
                )
            )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        failed = [line for line in logs if line["event"] == "store_call_failed"]
        assert failed == [
            {
                "event": "store_call_failed",
                "log_level": "warning",
                "rpc": "GetSummary",
                "error": "ClientError",
                "code": "ThrottlingException",
            }
        ]
