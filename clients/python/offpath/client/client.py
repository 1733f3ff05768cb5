"""A synchronous client over both services' gRPC APIs (see :mod:`.aio` for asyncio)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import grpc

from offpath.client.channels import open_channel
from offpath.client.messages import (
    DEFAULT_PAGE_SIZE,
    WAIT_INTERVAL_S,
    list_events_request,
    query_request,
    summary_request,
)
from offpath.client.settings import DEFAULT_INGEST_TARGET, DEFAULT_QUERY_TARGET, ClientSettings
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

__all__ = ["DEFAULT_INGEST_TARGET", "DEFAULT_QUERY_TARGET", "OffpathClient"]


class OffpathClient:
    """Calls QueryService and AnalyticsIngest; one channel each, opened lazily.

    Configured by ``settings`` (default: :meth:`ClientSettings.from_env`, the
    same ``OFFPATH_*`` variables the ``offpath`` command reads); the targets
    and ``timeout`` given here override it. Calls that fail with UNAVAILABLE
    are retried by gRPC under the settings' retry policy, within the call's
    deadline. Errors surface as ``grpc.RpcError`` with the server's status
    code and message (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...).

    TLS (the CA, a client certificate for mutual TLS, the server name) and
    AnalyticsIngest's read token come from the settings; the token is sent
    on the AnalyticsIngest channel only. A read without an accepted token
    fails UNAUTHENTICATED.
    """

    def __init__(
        self,
        query_target: str | None = None,
        ingest_target: str | None = None,
        *,
        timeout: float | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        self.settings = (settings or ClientSettings.from_env()).replace(
            query_target=query_target, ingest_target=ingest_target, timeout_s=timeout
        )
        self._query_channel: grpc.Channel | None = None
        self._ingest_channel: grpc.Channel | None = None

    @property
    def query_target(self) -> str:
        return self.settings.query_target

    @property
    def ingest_target(self) -> str:
        return self.settings.ingest_target

    @property
    def timeout(self) -> float:
        return self.settings.timeout_s

    def _query_stub(self) -> query_pb2_grpc.QueryServiceStub:
        if self._query_channel is None:
            self._query_channel = open_channel(self.query_target, self.settings)
        return query_pb2_grpc.QueryServiceStub(self._query_channel)

    def _ingest_stub(self) -> ingest_pb2_grpc.AnalyticsIngestStub:
        if self._ingest_channel is None:
            self._ingest_channel = open_channel(self.ingest_target, self.settings, token=True)
        return ingest_pb2_grpc.AnalyticsIngestStub(self._ingest_channel)

    def query(self, text: str, top_k: int | None = None) -> query_pb2.QueryResponse:
        """Ask QueryService; the response carries the analytics event id."""
        response: query_pb2.QueryResponse = self._query_stub().Query(
            query_request(text, top_k), timeout=self.timeout
        )
        return response

    def get_event(self, event_id: str) -> ingest_pb2.GetEventResponse:
        """One stored event; NOT_FOUND until it has been ingested."""
        response: ingest_pb2.GetEventResponse = self._ingest_stub().GetEvent(
            ingest_pb2.GetEventRequest(event_id=event_id), timeout=self.timeout
        )
        return response

    def wait_for_event(
        self, event_id: str, *, timeout: float = 10.0, interval: float = WAIT_INTERVAL_S
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
        page_size: int = DEFAULT_PAGE_SIZE,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> Iterator[analytics_pb2.AnalyticsEvent]:
        """Events in [start, end) (default: the last 24 hours), page by page."""
        request = list_events_request(start, end, page_size, newest_first)
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
            summary_request(start, end), timeout=self.timeout
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
