"""The asyncio client: :class:`OffpathClient`'s calls over ``grpc.aio``.

Same settings, retry policy, TLS and keepalive as the synchronous client
(both open their channels through :mod:`offpath.client.channels`); use it
from code that runs on an event loop, where a blocking call would stall
every other task::

    async with AsyncOffpathClient() as client:
        reply = await client.query("kubernetes")
        stored = await client.wait_for_event(reply.event_id, timeout=5)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from offpath.client.channels import open_aio_channel
from offpath.client.messages import (
    DEFAULT_PAGE_SIZE,
    WAIT_INTERVAL_S,
    list_events_request,
    query_request,
    summary_request,
)
from offpath.client.settings import ClientSettings
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc


class AsyncOffpathClient:
    """Calls QueryService and AnalyticsIngest from asyncio code; one channel
    each, opened on first use (so on the loop that uses it).

    Configured like :class:`~offpath.client.OffpathClient`. Errors surface as
    ``grpc.aio.AioRpcError`` (a ``grpc.RpcError``) with the server's status.
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
        self._query_channel: grpc.aio.Channel | None = None
        self._ingest_channel: grpc.aio.Channel | None = None

    @property
    def timeout(self) -> float:
        return self.settings.timeout_s

    def _query_stub(self) -> query_pb2_grpc.QueryServiceAsyncStub:
        if self._query_channel is None:
            self._query_channel = open_aio_channel(self.settings.query_target, self.settings)
        return query_pb2_grpc.QueryServiceStub(self._query_channel)

    def _ingest_stub(self) -> ingest_pb2_grpc.AnalyticsIngestAsyncStub:
        if self._ingest_channel is None:
            self._ingest_channel = open_aio_channel(
                self.settings.ingest_target, self.settings, token=True
            )
        return ingest_pb2_grpc.AnalyticsIngestStub(self._ingest_channel)

    async def query(self, text: str, top_k: int | None = None) -> query_pb2.QueryResponse:
        """Ask QueryService; the response carries the analytics event id."""
        return await self._query_stub().Query(query_request(text, top_k), timeout=self.timeout)

    async def get_event(self, event_id: str) -> ingest_pb2.GetEventResponse:
        """One stored event; NOT_FOUND until it has been ingested."""
        return await self._ingest_stub().GetEvent(
            ingest_pb2.GetEventRequest(event_id=event_id), timeout=self.timeout
        )

    async def wait_for_event(
        self, event_id: str, *, timeout: float = 10.0, interval: float = WAIT_INTERVAL_S
    ) -> ingest_pb2.GetEventResponse:
        """Poll :meth:`get_event` while it answers NOT_FOUND, up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.get_event(event_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(interval)

    async def list_events(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[analytics_pb2.AnalyticsEvent]:
        """Events in [start, end) (default: the last 24 hours), page by page."""
        request = list_events_request(start, end, page_size, newest_first)
        yielded = 0
        while True:
            response = await self._ingest_stub().ListEvents(request, timeout=self.timeout)
            for event in response.events:
                if limit is not None and yielded >= limit:
                    return
                yield event
                yielded += 1
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def summary(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> ingest_pb2.GetSummaryResponse:
        """Totals over [start, end) (default: the last 24 hours)."""
        return await self._ingest_stub().GetSummary(
            summary_request(start, end), timeout=self.timeout
        )

    async def close(self) -> None:
        for channel in (self._query_channel, self._ingest_channel):
            if channel is not None:
                await channel.close(None)
        self._query_channel = self._ingest_channel = None

    async def __aenter__(self) -> AsyncOffpathClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
