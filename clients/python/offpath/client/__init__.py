"""Python client for offpath: QueryService and the AnalyticsIngest read API,
plus the ``offpath`` command line."""

from offpath.client.client import DEFAULT_INGEST_TARGET, DEFAULT_QUERY_TARGET, OffpathClient

__all__ = ["DEFAULT_INGEST_TARGET", "DEFAULT_QUERY_TARGET", "OffpathClient"]
