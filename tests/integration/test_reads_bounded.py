"""The read API's bounds over the wire, on the local AWS endpoint: page tokens
made up by a client (a range past the 31-day cap, a year past 9999, a
month-long listing with a 200 ms deadline) are answered promptly, within the
Query budget, and GetEvent is still answered at once beside them."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from offpath.dev.bootstrap import Resources
from offpath.ingest.servicer import IngestServicer, ReadLimits
from offpath.ingest.store import EventStore, iso_ns
from offpath.kit.aws import client_config, dynamodb_client
from offpath.kit.ids import new_id
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

NS = 1_000_000_000
DAY = 86_400 * NS
LIMITS = ReadLimits()


@dataclass
class Served:
    stub: ingest_pb2_grpc.AnalyticsIngestAsyncStub
    store: EventStore
    queries: list[str]


@pytest.fixture
async def served(resources: Resources) -> AsyncIterator[Served]:
    """The read API on 127.0.0.1:<free port> over the test's tables; every
    DynamoDB Query the store makes is counted (botocore's event hooks)."""
    client: Any = dynamodb_client(client_config())
    queries: list[str] = []
    client.meta.events.register("before-call.dynamodb.Query", lambda **_: queries.append("query"))
    store = EventStore(client, resources.table, rollup_table=resources.rollup_table)
    servicer = IngestServicer(store, limits=LIMITS)
    server = grpc.aio.server()
    ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(ingest_pb2_grpc.AnalyticsIngestStub(channel), store, queries)
    finally:
        await channel.close(None)
        await server.stop(None)
        servicer.close()


def _token(start_ns: int, end_ns: int, cursor: str) -> str:
    """A page token as a client could make one up (the format is not secret)."""
    raw = json.dumps({"v": 1, "s": start_ns, "e": end_ns, "n": False, "c": cursor})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def _answer(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc


async def test_forged_tokens_are_answered_promptly_and_get_event_stays_fast(
    served: Served,
) -> None:
    now = time.time_ns()
    event = analytics_pb2.AnalyticsEvent(
        event_id=new_id(), service="offpath.v1.QueryService", method="/x", producer_id="it"
    )
    event.occurred_at.FromNanoseconds(now - 60 * NS)
    assert served.store.write([("it-1", [event])], ingested_ns=now) == 1

    # Past the range cap, and past the year 9999: refused, DynamoDB not asked.
    for token in (
        _token(now - 400 * DAY, now, f"{iso_ns(now - 400 * DAY)}#"),
        _token(now, 253_402_300_800 * NS + DAY, f"{iso_ns(now)}#"),
    ):
        request = ingest_pb2.ListEventsRequest(page_token=token)
        code, error = await _answer(served.stub.ListEvents(request, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "not one this service issued" in error.details()
    assert served.queries == []

    # Six month-long listings (the longest a token may name), 200 ms each:
    # each is answered within its deadline and the Query budget, with a
    # partial page and a token to go on, or DEADLINE_EXCEEDED, or (no turn
    # free in time) RESOURCE_EXHAUSTED; never a hang.
    month = ingest_pb2.ListEventsRequest(
        page_token=_token(now - 31 * DAY, now, f"{iso_ns(now - 31 * DAY)}#")
    )

    async def timed() -> tuple[grpc.StatusCode, Any, float]:
        started = time.monotonic()
        code, answer = await _answer(served.stub.ListEvents(month, timeout=0.2))
        return code, answer, time.monotonic() - started

    results = await asyncio.gather(*(timed() for _ in range(6)))
    for code, answer, took in results:
        assert code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ), answer
        if code == grpc.StatusCode.OK:
            assert answer.next_page_token
        assert took < 0.5

    started = time.monotonic()
    got = await served.stub.GetEvent(ingest_pb2.GetEventRequest(event_id=event.event_id), timeout=5)
    took = time.monotonic() - started
    assert got.event.event_id == event.event_id
    assert took < 0.5, f"GetEvent took {took:.3f} s beside the listings"

    # Range reads are served again once the listings' workers have stopped.
    summary = await served.stub.GetSummary(ingest_pb2.GetSummaryRequest(), timeout=5)
    assert summary.event_count == 1
    # Each listing made at most its Query budget, whatever its token said
    # (a month is 31 x 4 shards = 124 Queries unbounded), plus the summary's.
    assert len(served.queries) <= 6 * LIMITS.list_requests + 2
