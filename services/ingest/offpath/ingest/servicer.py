"""The AnalyticsIngest read API over the event store.

Bad requests get INVALID_ARGUMENT with a message that says what to change;
store failures get UNAVAILABLE (retryable), never a stack trace.

Every read is bounded, and stops when its caller goes:

- Times: request fields and page tokens alike must lie in 1970-01-01T00:00:00Z
  to 9999-12-31T23:59:59.999999999Z (INVALID_ARGUMENT naming the range, never
  a retryable error), ranges in ListEvents' 31 days or GetSummary's retention.
- Page tokens are not signed (a key would be a per-deployment secret to
  manage and rotate); they are distrusted instead. A token has a fixed
  schema (version, start, end, order, cursor: exact JSON types, no other
  keys), at most :data:`MAX_TOKEN_CHARS` characters, its range is checked
  as a fresh request's is, and its cursor must be a sort key inside that
  range (:meth:`EventStore.cursor_fits`), all before any DynamoDB call. So a
  forged token asks for nothing a request could not ask for, and each call's
  work is bounded whatever the token says.
- Work: a ListEvents page makes about :attr:`ReadLimits.list_requests`
  DynamoDB Queries and uses about half of its time (the call's deadline,
  at most :attr:`ReadLimits.time_cap_s`); then it ends early with the
  events so far and a next_page_token, as DynamoDB's own Query does, so a
  sparse 31-day range is read over a few calls, each making progress.
  GetSummary (one Query per day) is all or nothing within that time.
- Deadlines and cancellation: the store checks before each DynamoDB request
  whether the call was cancelled (the client went away or its deadline
  passed: grpc.aio cancels the handler, which tells the worker thread) or
  its time is up (then DEADLINE_EXCEEDED). A request already in flight is
  not interrupted (boto3 cannot be), so a worker may run on for one
  request, bounded by the DynamoDB client's read timeout and attempts.
- Threads: GetEvent has a pool of its own; ListEvents and GetSummary share
  another, at most :attr:`ReadLimits.range_reads` in progress (a turn is
  held until the worker really stops). A call that finds them all busy waits
  up to :attr:`ReadLimits.range_queue_s` within its deadline, then gets
  RESOURCE_EXHAUSTED. So slow range reads never delay a GetEvent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import grpc
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf import timestamp_pb2

from offpath.ingest import rollups
from offpath.ingest.store import (
    MAX_RANGE_DAYS,
    TIME_MAX_NS,
    TIME_MIN_NS,
    EventStore,
    ReadBudget,
    ReadStopped,
    Summary,
)
from offpath.kit.ids import is_uuid
from offpath.v1 import ingest_pb2, ingest_pb2_grpc

log = structlog.get_logger("offpath.ingest.api")

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["AnalyticsIngest"].full_name

_NS_PER_S = 1_000_000_000
_DEFAULT_RANGE_NS = 24 * 3600 * _NS_PER_S
_DAY_NS = 24 * 3600 * _NS_PER_S
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A token this service issues is about 150 characters (a cursor is 67).
MAX_TOKEN_CHARS: Final = 512
_TOKEN_TEXT: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN_KEYS: Final = frozenset({"v", "s", "e", "n", "c"})
_TOKEN_VERSION: Final = 1
_FOREIGN_TOKEN: Final = "page_token is not one this service issued"
TIME_RANGE_TEXT: Final = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z"
_MAX_SECONDS: Final = TIME_MAX_NS // _NS_PER_S

T = TypeVar("T")


class BadRequest(ValueError):
    """Client error, reported as INVALID_ARGUMENT."""


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What reads may use. The defaults keep GetEvent's and the range reads'
    threads together within the DynamoDB client's 10 connections for reads."""

    # DynamoDB Queries after which a ListEvents page may end early (4 shards:
    # 8 days of a sparse range per page).
    list_requests: int = 32
    # The longest a read works: the client's deadline if shorter.
    time_cap_s: float = 10.0
    # A ListEvents page ends early once this share of its time is used.
    page_time_share: float = 0.5
    # Threads answering GetEvent.
    point_workers: int = 6
    # ListEvents and GetSummary calls worked on at once (a thread each).
    range_reads: int = 4
    # How long a range read waits for a turn before RESOURCE_EXHAUSTED.
    range_queue_s: float = 1.0


def timestamp_ns(stamp: timestamp_pb2.Timestamp, name: str) -> int:
    """A request's Timestamp field in ns; BadRequest outside the times we serve."""
    if not 0 <= stamp.nanos < _NS_PER_S:
        raise BadRequest(f"{name}.nanos is {stamp.nanos}; it must be from 0 to 999999999")
    if stamp.seconds < 0:
        raise BadRequest(f"{name} is before 1970; times must be from {TIME_RANGE_TEXT}")
    if stamp.seconds > _MAX_SECONDS:
        raise BadRequest(f"{name} is after the year 9999; times must be from {TIME_RANGE_TEXT}")
    return stamp.seconds * _NS_PER_S + stamp.nanos


def resolve_range(
    start: timestamp_pb2.Timestamp | None,
    end: timestamp_pb2.Timestamp | None,
    now_ns: int,
    max_days: int = MAX_RANGE_DAYS,
) -> tuple[int, int]:
    """[start, end) in ns: end defaults to now, start to end minus 24 hours
    (but not before 1970)."""
    end_ns = timestamp_ns(end, "end_time") if end is not None else now_ns
    start_ns = (
        timestamp_ns(start, "start_time")
        if start is not None
        else max(TIME_MIN_NS, end_ns - _DEFAULT_RANGE_NS)
    )
    check_range(start_ns, end_ns, max_days)
    return start_ns, end_ns


def check_range(start_ns: int, end_ns: int, max_days: int = MAX_RANGE_DAYS) -> None:
    """Raise :class:`BadRequest` unless [start, end) is a range we serve."""
    if start_ns < TIME_MIN_NS:
        raise BadRequest(f"start_time is before 1970; times must be from {TIME_RANGE_TEXT}")
    if end_ns > TIME_MAX_NS:
        raise BadRequest(f"end_time is after the year 9999; times must be from {TIME_RANGE_TEXT}")
    if start_ns >= end_ns:
        raise BadRequest("start_time must be before end_time")
    if end_ns - start_ns > max_days * _DAY_NS:
        raise BadRequest(f"the time range spans more than {max_days} days; narrow it")


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
    raw = json.dumps(
        {"v": _TOKEN_VERSION, "s": start_ns, "e": end_ns, "n": newest_first, "c": cursor},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number a token holds")


def decode_token(token: str) -> tuple[int, int, bool, str]:
    """(start ns, end ns, newest first, cursor) of a token of the form
    :func:`encode_token` makes; :class:`BadRequest` for anything else. The
    values are only well-typed here: :func:`list_arguments` checks them."""
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_TEXT.fullmatch(token):
        raise BadRequest(_FOREIGN_TOKEN)
    try:
        padded = token + "=" * (-len(token) % 4)
        data: Any = json.loads(
            base64.urlsafe_b64decode(padded.encode()), parse_constant=_no_constant
        )
    except (ValueError, binascii.Error, RecursionError):
        raise BadRequest(_FOREIGN_TOKEN) from None
    if not isinstance(data, dict) or data.keys() != _TOKEN_KEYS:
        raise BadRequest(_FOREIGN_TOKEN)
    version, start, end, newest, cursor = (data[k] for k in ("v", "s", "e", "n", "c"))
    # Exact types: JSON's true is not 1, 1.0 is not 1, "5" is not 5.
    if (
        type(version) is not int
        or version != _TOKEN_VERSION
        or type(start) is not int
        or type(end) is not int
        or type(newest) is not bool
        or type(cursor) is not str
    ):
        raise BadRequest(_FOREIGN_TOKEN)
    return start, end, newest, cursor


@dataclass(frozen=True, slots=True)
class ListArguments:
    start_ns: int
    end_ns: int
    page_size: int
    newest_first: bool
    cursor: str | None


def list_arguments(request: ingest_pb2.ListEventsRequest, now_ns: int) -> ListArguments:
    """A ListEvents request's checked arguments; :class:`BadRequest` if any
    is out of bounds. A page token is checked as a fresh request would be."""
    page_size = request.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadRequest(f"page_size is {page_size}; it must be between 1 and {MAX_PAGE_SIZE}")
    if not request.page_token:
        start_ns, end_ns = resolve_range(
            request.start_time if request.HasField("start_time") else None,
            request.end_time if request.HasField("end_time") else None,
            now_ns,
        )
        return ListArguments(start_ns, end_ns, page_size, request.newest_first, None)
    start_ns, end_ns, newest_first, cursor = decode_token(request.page_token)
    given_start = (
        timestamp_ns(request.start_time, "start_time") if request.HasField("start_time") else None
    )
    given_end = timestamp_ns(request.end_time, "end_time") if request.HasField("end_time") else None
    if (
        given_start not in (None, start_ns)
        or given_end not in (None, end_ns)
        or newest_first != request.newest_first
    ):
        raise BadRequest("page_token belongs to a request with other fields")
    try:
        check_range(start_ns, end_ns)
    except BadRequest as exc:
        raise BadRequest(f"{_FOREIGN_TOKEN}: {exc}") from None
    if not EventStore.cursor_fits(start_ns, end_ns, cursor):
        raise BadRequest(f"{_FOREIGN_TOKEN}: its position is not inside its time range")
    return ListArguments(start_ns, end_ns, page_size, newest_first, cursor)


class IngestServicer(ingest_pb2_grpc.AnalyticsIngestServicer):
    """GetEvent, ListEvents and GetSummary over the store. ListEvents serves
    ranges up to MAX_RANGE_DAYS (it reads events); GetSummary up to
    ``summary_max_days``, the retention period (it reads rollups, a few
    items per bucket whatever the traffic). Call :meth:`close` when the
    server has stopped."""

    def __init__(
        self,
        store: EventStore,
        *,
        summary_max_days: int = MAX_RANGE_DAYS,
        limits: ReadLimits | None = None,
    ) -> None:
        self._store = store
        self._summary_max_days = summary_max_days
        self._limits = limits or ReadLimits()
        self._point_pool = ThreadPoolExecutor(
            self._limits.point_workers, thread_name_prefix="offpath-ingest-get"
        )
        self._range_pool = ThreadPoolExecutor(
            self._limits.range_reads, thread_name_prefix="offpath-ingest-range"
        )
        self._range_turns = asyncio.Semaphore(self._limits.range_reads)

    def close(self) -> None:
        """Stop the read threads: queued reads are dropped, running ones stop
        at their next DynamoDB request (their calls have ended)."""
        self._point_pool.shutdown(wait=False, cancel_futures=True)
        self._range_pool.shutdown(wait=False, cancel_futures=True)

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
        budget, allowed_s = self._budget(context)
        key = event_id.lower()
        future = await self._submit(
            context, self._point_pool, lambda: self._store.get(key, budget=budget)
        )
        stored = await self._run(context, "GetEvent", budget, allowed_s, future)
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
            args = list_arguments(request, time.time_ns())
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        budget, allowed_s = self._budget(context, max_requests=self._limits.list_requests)
        events, next_cursor = await self._range_read(
            context,
            "ListEvents",
            budget,
            allowed_s,
            lambda: self._store.list(
                args.start_ns,
                args.end_ns,
                page_size=args.page_size,
                newest_first=args.newest_first,
                cursor=args.cursor,
                budget=budget,
            ),
        )
        return ingest_pb2.ListEventsResponse(
            events=[stored.event for stored in events],
            next_page_token=(
                encode_token(args.start_ns, args.end_ns, args.newest_first, next_cursor)
                if next_cursor
                else ""
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
        budget, allowed_s = self._budget(context)
        summary: Summary = await self._range_read(
            context,
            "GetSummary",
            budget,
            allowed_s,
            lambda: self._store.summary(start_ns, end_ns, budget=budget),
        )
        return summary_response(summary)

    # -- running reads -------------------------------------------------------

    def _budget(
        self, context: grpc.aio.ServicerContext[Any, Any], *, max_requests: int | None = None
    ) -> tuple[ReadBudget, float]:
        """The call's budget and the seconds it may work: the client's
        deadline, at most the server's cap."""
        remaining = context.time_remaining()
        cap = self._limits.time_cap_s
        allowed = cap if remaining is None else max(0.0, min(remaining, cap))
        now = time.monotonic()
        budget = ReadBudget(
            max_requests=max_requests,
            soft_deadline=now + allowed * self._limits.page_time_share,
            hard_deadline=now + allowed,
        )
        return budget, allowed

    async def _range_read(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        rpc: str,
        budget: ReadBudget,
        allowed_s: float,
        read: Callable[[], T],
    ) -> T:
        """``read`` on the range pool once a turn is free (RESOURCE_EXHAUSTED
        if none frees up in time); the turn is held until the worker stops."""
        turns = self._range_turns
        if turns.locked():
            assert budget.hard_deadline is not None
            wait_s = min(self._limits.range_queue_s, budget.hard_deadline - time.monotonic())
            try:
                await asyncio.wait_for(turns.acquire(), timeout=max(wait_s, 0.0))
            except TimeoutError:
                log.warning("range_reads_busy", rpc=rpc, in_progress=self._limits.range_reads)
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._limits.range_reads} ListEvents/GetSummary calls are in progress, "
                    "as many as this server works on at once; retry after a moment",
                )
        else:
            await turns.acquire()
        loop = asyncio.get_running_loop()

        def give_back(_: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for one
                loop.call_soon_threadsafe(turns.release)

        try:
            future = await self._submit(context, self._range_pool, read)
        except BaseException:
            turns.release()
            raise
        future.add_done_callback(give_back)
        return await self._run(context, rpc, budget, allowed_s, future)

    @staticmethod
    async def _submit(
        context: grpc.aio.ServicerContext[Any, Any],
        pool: ThreadPoolExecutor,
        read: Callable[[], T],
    ) -> Future[T]:
        try:
            return pool.submit(read)
        except RuntimeError:  # the pool is shut down: the server is stopping
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")

    async def _run(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        rpc: str,
        budget: ReadBudget,
        allowed_s: float,
        future: Future[T],
    ) -> T:
        """The worker's result; the worker is told to stop when the call is
        cancelled or its time is up (a Query in flight then finishes alone)."""
        assert budget.hard_deadline is not None
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future),
                timeout=max(budget.hard_deadline - time.monotonic(), 0.0),
            )
        except asyncio.CancelledError:
            budget.cancel()
            log.info("read_cancelled", rpc=rpc, dynamodb_requests=budget.requests)
            raise
        except (TimeoutError, ReadStopped):
            budget.cancel()
            log.info(
                "read_deadline",
                rpc=rpc,
                allowed_s=round(allowed_s, 3),
                dynamodb_requests=budget.requests,
            )
            hint = "allow longer" if rpc == "GetEvent" else "narrow the time range or allow longer"
            code, message = (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{rpc} did not finish within {allowed_s:.3g} s (the call's deadline, "
                f"at most {self._limits.time_cap_s:g} s); {hint}",
            )
        except (ClientError, BotoCoreError) as exc:
            error = (
                exc.response.get("Error", {}).get("Code", "")
                if isinstance(exc, ClientError)
                else ""
            )
            log.warning("store_call_failed", rpc=rpc, error=type(exc).__name__, code=error)
            code, message = (
                grpc.StatusCode.UNAVAILABLE,
                f"event store unavailable: {type(exc).__name__}",
            )
        except Exception as exc:
            log.exception("store_call_failed", rpc=rpc, error=type(exc).__name__)
            code, message = (
                grpc.StatusCode.UNAVAILABLE,
                f"event store unavailable: {type(exc).__name__}",
            )
        await context.abort(code, message)


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
