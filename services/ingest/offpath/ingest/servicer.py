"""The AnalyticsIngest read API over the event store.

DynamoDB calls are blocking; each RPC runs them on a worker thread so the
event loop keeps serving. Bad requests get INVALID_ARGUMENT with a message
that says what to change; store failures get UNAVAILABLE (retryable), never
a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2

from offpath.ingest import rollups
from offpath.ingest.store import MAX_RANGE_DAYS, EventStore, Summary
from offpath.kit.ids import is_uuid
from offpath.v1 import ingest_pb2, ingest_pb2_grpc

log = structlog.get_logger("offpath.ingest.api")

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["AnalyticsIngest"].full_name

_NS_PER_S = 1_000_000_000
_DEFAULT_RANGE_NS = 24 * 3600 * _NS_PER_S
_DAY_NS = 24 * 3600 * _NS_PER_S
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class BadRequest(ValueError):
    """Client error, reported as INVALID_ARGUMENT."""


def resolve_range(
    start: timestamp_pb2.Timestamp | None,
    end: timestamp_pb2.Timestamp | None,
    now_ns: int,
    max_days: int = MAX_RANGE_DAYS,
) -> tuple[int, int]:
    """[start, end) in ns: end defaults to now, start to end minus 24 hours."""
    end_ns = end.ToNanoseconds() if end is not None else now_ns
    start_ns = start.ToNanoseconds() if start is not None else end_ns - _DEFAULT_RANGE_NS
    check_range(start_ns, end_ns, max_days)
    return start_ns, end_ns


def check_range(start_ns: int, end_ns: int, max_days: int = MAX_RANGE_DAYS) -> None:
    """Raise :class:`BadRequest` unless [start, end) is a range we serve."""
    if start_ns >= end_ns:
        raise BadRequest("start_time must be before end_time")
    if end_ns - start_ns > max_days * _DAY_NS:
        raise BadRequest(f"the time range spans more than {max_days} days; narrow it")
    if start_ns < 0:
        raise BadRequest("start_time must not be before 1970")


def request_range(
    request: ingest_pb2.ListEventsRequest | ingest_pb2.GetSummaryRequest,
    max_days: int = MAX_RANGE_DAYS,
) -> tuple[int, int]:
    """The request's [start_time, end_time), defaults filled in from now."""
    return resolve_range(
        request.start_time if request.HasField("start_time") else None,
        request.end_time if request.HasField("end_time") else None,
        time.time_ns(),
        max_days,
    )


def encode_token(start_ns: int, end_ns: int, newest_first: bool, cursor: str) -> str:
    raw = json.dumps({"v": 1, "s": start_ns, "e": end_ns, "n": newest_first, "c": cursor})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[int, int, bool, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data: Any = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data.get("v") != 1:
            raise ValueError("version")
        return int(data["s"]), int(data["e"]), bool(data["n"]), str(data["c"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise BadRequest("page_token is not one this service issued") from None


class IngestServicer(ingest_pb2_grpc.AnalyticsIngestServicer):
    """GetEvent, ListEvents and GetSummary over the store. ListEvents serves
    ranges up to MAX_RANGE_DAYS (it reads events); GetSummary up to
    ``summary_max_days``, the retention period (it reads rollups, a few
    items per bucket whatever the traffic)."""

    def __init__(self, store: EventStore, *, summary_max_days: int = MAX_RANGE_DAYS) -> None:
        self._store = store
        self._summary_max_days = summary_max_days

    async def GetEvent(
        self,
        request: ingest_pb2.GetEventRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.GetEventResponse:
        event_id = request.event_id.strip()
        if not is_uuid(event_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"event_id {event_id[:64]!r} is not a UUID (8-4-4-4-12 hex)",
            )
        stored = await self._call(context, self._store.get, event_id.lower())
        if stored is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"event {event_id} is not stored (yet): events appear within seconds of the reply",
            )
        assert stored is not None
        response = ingest_pb2.GetEventResponse(event=stored.event, batch_id=stored.batch_id)
        response.ingested_at.FromNanoseconds(stored.ingested_at_ns)
        return response

    async def ListEvents(
        self,
        request: ingest_pb2.ListEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.ListEventsResponse:
        try:
            page_size = request.page_size or DEFAULT_PAGE_SIZE
            if not 1 <= page_size <= MAX_PAGE_SIZE:
                raise BadRequest(
                    f"page_size is {page_size}; it must be between 1 and {MAX_PAGE_SIZE}"
                )
            cursor: str | None = None
            newest_first = request.newest_first
            if request.page_token:
                start_ns, end_ns, token_newest, cursor = decode_token(request.page_token)
                given = (
                    request.HasField("start_time")
                    and request.start_time.ToNanoseconds() != start_ns
                ) or (request.HasField("end_time") and request.end_time.ToNanoseconds() != end_ns)
                if given or token_newest != newest_first:
                    raise BadRequest("page_token belongs to a request with other fields")
                # A token is not trusted: its range and cursor are checked as
                # a request's would be (and before any DynamoDB call).
                try:
                    check_range(start_ns, end_ns)
                except BadRequest:
                    raise BadRequest("page_token is not one this service issued") from None
                if not EventStore.cursor_fits(start_ns, end_ns, cursor):
                    raise BadRequest("page_token is not one this service issued")
            else:
                start_ns, end_ns = request_range(request)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        events, next_cursor = await self._call(
            context,
            lambda: self._store.list(
                start_ns, end_ns, page_size=page_size, newest_first=newest_first, cursor=cursor
            ),
        )
        return ingest_pb2.ListEventsResponse(
            events=[stored.event for stored in events],
            next_page_token=(
                encode_token(start_ns, end_ns, newest_first, next_cursor) if next_cursor else ""
            ),
        )

    async def GetSummary(
        self,
        request: ingest_pb2.GetSummaryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.GetSummaryResponse:
        try:
            start_ns, end_ns = request_range(request, self._summary_max_days)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        summary: Summary = await self._call(context, self._store.summary, start_ns, end_ns)
        return summary_response(summary)

    async def _call(self, context: grpc.aio.ServicerContext[Any, Any], fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            log.exception("store_call_failed")
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"event store unavailable: {type(exc).__name__}"
            )


def summary_response(summary: Summary) -> ingest_pb2.GetSummaryResponse:
    """The GetSummary reply for the store's totals."""
    percentiles = dict(summary.percentiles_ms)
    response = ingest_pb2.GetSummaryResponse(
        event_count=summary.event_count,
        error_count=summary.error_count,
        top_skills=[ingest_pb2.SkillCount(name=n, count=c) for n, c in summary.top_skills],
        mean_processing_ms=summary.mean_processing_ms,
        errors_by_code=[ingest_pb2.StatusCount(code=c, count=n) for c, n in summary.errors_by_code],
        p50_processing_ms=percentiles.get(0.5, 0.0),
        p95_processing_ms=percentiles.get(0.95, 0.0),
        p99_processing_ms=percentiles.get(0.99, 0.0),
        processing_ms_relative_error=rollups.RELATIVE_ERROR,
        top_queries=[ingest_pb2.QueryCount(text=t, count=c) for t, c in summary.top_queries],
        other_query_count=summary.other_queries,
        models=[
            ingest_pb2.ModelUsage(model=m, event_count=e, token_count=t)
            for m, e, t in summary.models
        ],
    )
    for start_ns, events, errors in summary.volume:
        p50, p95, p99 = summary.bucket_percentiles_ms.get(start_ns, (0.0, 0.0, 0.0))
        bucket = response.volume.add(
            event_count=events,
            error_count=errors,
            p50_processing_ms=p50,
            p95_processing_ms=p95,
            p99_processing_ms=p99,
        )
        bucket.start_time.FromNanoseconds(start_ns)
    response.bucket_width.FromSeconds(summary.bucket_s)
    response.covered_start_time.FromNanoseconds(summary.covered_start_ns)
    response.covered_end_time.FromNanoseconds(summary.covered_end_ns)
    return response


__all__ = ["IngestServicer", "summary_response"]
