"""A small synchronous client over both services' gRPC APIs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from offpath.kit import defaults
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

DEFAULT_QUERY_TARGET = defaults.QUERY_TARGET
DEFAULT_INGEST_TARGET = defaults.INGEST_TARGET


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


class OffpathClient:
    """Calls QueryService and AnalyticsIngest; one channel each, opened lazily.

    Errors surface as ``grpc.RpcError`` with the server's status code and
    message (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...).
    """

    def __init__(
        self,
        query_target: str = DEFAULT_QUERY_TARGET,
        ingest_target: str = DEFAULT_INGEST_TARGET,
        *,
        timeout: float = 5.0,
    ) -> None:
        self.query_target = query_target
        self.ingest_target = ingest_target
        self.timeout = timeout
        self._query_channel: grpc.Channel | None = None
        self._ingest_channel: grpc.Channel | None = None

    def _query_stub(self) -> query_pb2_grpc.QueryServiceStub:
        if self._query_channel is None:
            self._query_channel = grpc.insecure_channel(self.query_target)
        return query_pb2_grpc.QueryServiceStub(self._query_channel)

    def _ingest_stub(self) -> ingest_pb2_grpc.AnalyticsIngestStub:
        if self._ingest_channel is None:
            self._ingest_channel = grpc.insecure_channel(self.ingest_target)
        return ingest_pb2_grpc.AnalyticsIngestStub(self._ingest_channel)

    def query(self, text: str, top_k: int | None = None) -> query_pb2.QueryResponse:
        """Ask QueryService; the response carries the analytics event id."""
        request = query_pb2.QueryRequest(query=text)
        if top_k is not None:
            request.top_k = top_k
        response: query_pb2.QueryResponse = self._query_stub().Query(request, timeout=self.timeout)
        return response

    def get_event(self, event_id: str) -> ingest_pb2.GetEventResponse:
        """One stored event; NOT_FOUND until it has been ingested."""
        response: ingest_pb2.GetEventResponse = self._ingest_stub().GetEvent(
            ingest_pb2.GetEventRequest(event_id=event_id), timeout=self.timeout
        )
        return response

    def wait_for_event(
        self, event_id: str, *, timeout: float = 10.0, interval: float = 0.2
    ) -> ingest_pb2.GetEventResponse:
        """Poll :meth:`get_event` while it answers NOT_FOUND, up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_event(event_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() >= deadline:
                    raise
            time.sleep(interval)

    def list_events(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 100,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> Iterator[analytics_pb2.AnalyticsEvent]:
        """Events in [start, end) (default: the last 24 hours), page by page."""
        request = ingest_pb2.ListEventsRequest(
            start_time=_timestamp(start),
            end_time=_timestamp(end),
            page_size=page_size,
            newest_first=newest_first,
        )
        yielded = 0
        while True:
            response: ingest_pb2.ListEventsResponse = self._ingest_stub().ListEvents(
                request, timeout=self.timeout
            )
            for event in response.events:
                if limit is not None and yielded >= limit:
                    return
                yield event
                yielded += 1
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def summary(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> ingest_pb2.GetSummaryResponse:
        """Totals over [start, end) (default: the last 24 hours)."""
        response: ingest_pb2.GetSummaryResponse = self._ingest_stub().GetSummary(
            ingest_pb2.GetSummaryRequest(start_time=_timestamp(start), end_time=_timestamp(end)),
            timeout=self.timeout,
        )
        return response

    def close(self) -> None:
        for channel in (self._query_channel, self._ingest_channel):
            if channel is not None:
                channel.close()
        self._query_channel = self._ingest_channel = None

    def __enter__(self) -> OffpathClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
