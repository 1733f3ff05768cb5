"""AnalyticsIngest's read API under hostile input: property-based requests
(hypothesis) over every field of GetEvent, ListEvents and GetSummary, and
raw bytes that are not a request, sent to the server the service runs
(offpath.kit.server.serve with the RPC metrics interceptor, the 1 MiB
message limit, health) over an EventStore on FakeDynamoDb, on a free port.

Every call ends with a status a client's input may earn (OK,
INVALID_ARGUMENT, NOT_FOUND), the one the contract names where it names
one, never UNKNOWN, INTERNAL or UNAVAILABLE, and the service is still
SERVING and answering afterwards.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offpath.ingest import rollups
from offpath.ingest.servicer import MAX_PAGE_SIZE, SERVICE_NAME, IngestServicer
from offpath.ingest.store import EventStore, create_table_request, rollup_table_for
from offpath.kit.ids import is_uuid
from offpath.kit.rpcmetrics import RpcMetrics
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.serving import assert_serving, serving
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

TABLE = "events"
TIMEOUT_S = 10.0
NS = 1_000_000_000
NOW_S = int(time.time())
YEAR_1_S = -62_135_596_800  # 0001-01-01T00:00:00Z
YEAR_9999_END_S = 253_402_300_799  # 9999-12-31T23:59:59Z
# Stored events, the last hour: default ranges (the last 24 hours) find them.
STORED_IDS = [str(uuid.UUID(int=n, version=4)) for n in range(1, 9)]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the checkout
    # One server for all of a test's examples, on purpose: it must survive them all.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@dataclass
class Served:
    channel: grpc.aio.Channel
    tokens: list[str]  # page tokens the service issued

    @property
    def stub(self) -> ingest_pb2_grpc.AnalyticsIngestAsyncStub:
        return ingest_pb2_grpc.AnalyticsIngestStub(self.channel)

    async def healthy(self) -> None:
        """SERVING by health, and a plain read still answered."""
        await assert_serving(self.channel, SERVICE_NAME, TIMEOUT_S)
        got = await self.stub.GetEvent(
            ingest_pb2.GetEventRequest(event_id=STORED_IDS[0]), timeout=TIMEOUT_S
        )
        assert got.event.event_id == STORED_IDS[0]


def _event(event_id: str, occurred_ns: int) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        producer_id="producer-1",
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    return event


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The read API as main.py assembles it, over a store holding
    STORED_IDS, served by serve() on 127.0.0.1:<free port>; every test ends
    with the service checked healthy, then stopped."""
    ddb = FakeDynamoDb()
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    store = EventStore(ddb, TABLE, shards=4, sleep=lambda _: None)
    now_ns = time.time_ns()
    events = [_event(e, now_ns - (n + 1) * 60 * NS) for n, e in enumerate(STORED_IDS)]
    assert store.write([("b-1", events)], ingested_ns=now_ns) == len(events)
    servicer = IngestServicer(store)
    metrics = RpcMetrics()

    async def stopped() -> None:
        servicer.close()

    async with serving(
        SERVICE_NAME,
        lambda s: ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(servicer, s),
        interceptors=[metrics.interceptor],
        activity=metrics.activity,
        on_stopped=stopped,
    ) as channel:
        stub = ingest_pb2_grpc.AnalyticsIngestStub(channel)
        tokens: list[str] = []
        for newest_first in (False, True):
            page = await stub.ListEvents(
                ingest_pb2.ListEventsRequest(page_size=3, newest_first=newest_first),
                timeout=TIMEOUT_S,
            )
            assert page.next_page_token
            tokens.append(page.next_page_token)
        yield (service := Served(channel, tokens))
        await service.healthy()


async def status(call: Any) -> grpc.StatusCode:
    """The status a call ended with, checking an error's message is a message."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        return grpc.StatusCode.OK
    details = error.details() or ""
    assert details, f"{error.code()} without a message"
    assert "Traceback" not in details, details
    assert len(details) < 500, details
    return error.code()


# -- strategies ----------------------------------------------------------------

_seconds = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(
        [YEAR_1_S, YEAR_1_S - 1, -1, 0, 1, YEAR_9999_END_S, YEAR_9999_END_S + 1, NOW_S]
    ),
    # Near now, where ranges are valid (up to 31 days) or just too long.
    st.integers(min_value=NOW_S - 40 * 86_400, max_value=NOW_S + 86_400),
)
_nanos = st.one_of(
    st.integers(min_value=0, max_value=NS - 1),
    st.sampled_from([-1, 0, NS - 1, NS]),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
TIMESTAMPS = st.one_of(
    st.none(), st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), _seconds, _nanos)
)


def _b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=80),
    st.lists(st.integers(), max_size=3),
)
PAGE_TOKENS = st.one_of(
    st.just(""),
    st.text(max_size=600),
    st.from_regex(r"[A-Za-z0-9_-]{1,600}", fullmatch=True),
    # Token-shaped: base64 of a JSON object with the token's keys (or some).
    st.dictionaries(st.sampled_from(["v", "s", "e", "n", "c", "x"]), _json_values).map(_b64),
    st.builds(
        lambda s, e, n, c: _b64({"v": 1, "s": s, "e": e, "n": n, "c": c}),
        _seconds.map(lambda s: s * NS),
        _seconds.map(lambda s: s * NS),
        st.booleans(),
        st.text(max_size=80),
    ),
)
PAGE_SIZES = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.sampled_from([-1, 0, 1, MAX_PAGE_SIZE, MAX_PAGE_SIZE + 1]),
)
EVENT_IDS = st.one_of(
    st.text(max_size=100),
    st.uuids().map(str),
    st.uuids().map(lambda u: f"  {str(u).upper()}\t"),
    st.sampled_from(STORED_IDS),
    st.text(st.sampled_from("0123456789abcdefABCDEF-{}"), min_size=30, max_size=40),
)


def _time_fault(stamp: timestamp_pb2.Timestamp | None) -> bool:
    """A set time outside what the service serves (nanos outside 0..999999999,
    before 1970 or after 9999): INVALID_ARGUMENT by contract."""
    if stamp is None:
        return False
    return not (0 <= stamp.nanos < NS and 0 <= stamp.seconds <= YEAR_9999_END_S)


def _list_request(
    start: timestamp_pb2.Timestamp | None,
    end: timestamp_pb2.Timestamp | None,
    page_size: int,
    token: str,
    newest_first: bool,
) -> ingest_pb2.ListEventsRequest:
    request = ingest_pb2.ListEventsRequest(
        page_size=page_size, page_token=token, newest_first=newest_first
    )
    if start is not None:
        request.start_time.CopyFrom(start)
    if end is not None:
        request.end_time.CopyFrom(end)
    return request


# -- properties ----------------------------------------------------------------


@FUZZ
@given(event_id=EVENT_IDS)
async def test_get_event_any_id(served: Served, event_id: str) -> None:
    """GetEvent: a stored id is found, another UUID is NOT_FOUND, anything
    else INVALID_ARGUMENT."""
    code = await status(
        served.stub.GetEvent(ingest_pb2.GetEventRequest(event_id=event_id), timeout=TIMEOUT_S)
    )
    key = event_id.strip()
    if not is_uuid(key):
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    elif key.lower() in STORED_IDS:
        assert code == grpc.StatusCode.OK
    else:
        assert code == grpc.StatusCode.NOT_FOUND


@FUZZ
@given(
    start=TIMESTAMPS,
    end=TIMESTAMPS,
    page_size=PAGE_SIZES,
    token=PAGE_TOKENS,
    newest_first=st.booleans(),
)
async def test_list_events_any_request(
    served: Served,
    start: timestamp_pb2.Timestamp | None,
    end: timestamp_pb2.Timestamp | None,
    page_size: int,
    token: str,
    newest_first: bool,
) -> None:
    """ListEvents: OK or INVALID_ARGUMENT whatever the fields; bad times and
    page sizes are INVALID_ARGUMENT, and so is a token the service did not
    issue."""
    request = _list_request(start, end, page_size, token, newest_first)
    code = await status(served.stub.ListEvents(request, timeout=TIMEOUT_S))
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    if _time_fault(start) or _time_fault(end) or not 0 <= page_size <= MAX_PAGE_SIZE:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    if token and token not in served.tokens:
        # A forged token can only be accepted if it is exactly what the
        # service would issue; random ones never are.
        assert code == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(
    token_index=st.integers(min_value=0, max_value=1),
    page_size=PAGE_SIZES,
    start=TIMESTAMPS,
    end=TIMESTAMPS,
    newest_first=st.booleans(),
)
async def test_list_events_issued_token_with_other_fields(
    served: Served,
    token_index: int,
    page_size: int,
    start: timestamp_pb2.Timestamp | None,
    end: timestamp_pb2.Timestamp | None,
    newest_first: bool,
) -> None:
    """A real page token beside arbitrary other fields: OK only when they
    agree with it (or are unset), INVALID_ARGUMENT otherwise."""
    token = served.tokens[token_index]
    request = _list_request(start, end, page_size, token, newest_first)
    code = await status(served.stub.ListEvents(request, timeout=TIMEOUT_S))
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    if newest_first != bool(token_index) or _time_fault(start) or _time_fault(end):
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    elif start is None and end is None and 0 <= page_size <= MAX_PAGE_SIZE:
        assert code == grpc.StatusCode.OK


@FUZZ
@given(start=TIMESTAMPS, end=TIMESTAMPS)
async def test_get_summary_any_range(
    served: Served, start: timestamp_pb2.Timestamp | None, end: timestamp_pb2.Timestamp | None
) -> None:
    """GetSummary: OK or INVALID_ARGUMENT; bad times INVALID_ARGUMENT."""
    request = ingest_pb2.GetSummaryRequest()
    if start is not None:
        request.start_time.CopyFrom(start)
    if end is not None:
        request.end_time.CopyFrom(end)
    code = await status(served.stub.GetSummary(request, timeout=TIMEOUT_S))
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    if _time_fault(start) or _time_fault(end):
        assert code == grpc.StatusCode.INVALID_ARGUMENT


METHODS = [f"/{SERVICE_NAME}/{name}" for name in ("GetEvent", "ListEvents", "GetSummary")]


async def _raw(served: Served, method: str, raw: bytes) -> grpc.StatusCode:
    # No serializers: the bytes go on the wire as they are.
    try:
        await served.channel.unary_unary(method, None, None)(raw, timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        return grpc.StatusCode.OK
    assert "Traceback" not in (error.details() or "")
    return error.code()


@FUZZ
@given(method=st.sampled_from(METHODS), raw=st.binary(max_size=256))
async def test_any_bytes_get_a_client_status(served: Served, method: str, raw: bytes) -> None:
    """Arbitrary bytes to any read method: a client's status, never a fault."""
    assert await _raw(served, method, raw) in CLIENT_CODES


@pytest.mark.parametrize(
    ("method", "raw", "why"),
    [
        ("GetEvent", b"\x0a\x02\xff\xfe", "event_id is not UTF-8"),
        ("ListEvents", b"\x22\x02\xff\xfe", "page_token is not UTF-8"),
        ("ListEvents", b"\x0a\x03\x08\xff", "start_time's seconds run past its end"),
        ("GetSummary", b"\x12\x05\x08\x01", "end_time's length runs past the message"),
        ("GetSummary", b"\x0a", "a tag with no length"),
    ],
)
async def test_undecodable_request_is_invalid_argument(
    served: Served, method: str, raw: bytes, why: str
) -> None:
    """A request that does not decode is the client's error: INVALID_ARGUMENT."""
    assert await _raw(served, f"/{SERVICE_NAME}/{method}", raw) == (
        grpc.StatusCode.INVALID_ARGUMENT
    ), why
