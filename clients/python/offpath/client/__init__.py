"""Python client for offpath: QueryService and the AnalyticsIngest read API,
synchronous (:class:`OffpathClient`) and asyncio (:class:`AsyncOffpathClient`),
both configured by :class:`ClientSettings`; plus the ``offpath`` command line."""

from offpath.client.aio import AsyncOffpathClient
from offpath.client.client import DEFAULT_INGEST_TARGET, DEFAULT_QUERY_TARGET, OffpathClient
from offpath.client.settings import ClientSettings

__all__ = [
    "DEFAULT_INGEST_TARGET",
    "DEFAULT_QUERY_TARGET",
    "AsyncOffpathClient",
    "ClientSettings",
    "OffpathClient",
]
