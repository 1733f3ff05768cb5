"""Requests built the same way by both clients, and status names for output."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from offpath.v1 import ingest_pb2, query_pb2

# Page size the clients ask ListEvents for (the server allows 1-1000).
DEFAULT_PAGE_SIZE = 100
# Polling interval of wait_for_event while the event is not stored yet.
WAIT_INTERVAL_S = 0.2

_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_name(code: int) -> str:
    """``OK``, ``INVALID_ARGUMENT``, ... for a numeric gRPC status code."""
    return _STATUS_NAMES.get(code, f"CODE_{code}")


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def query_request(text: str, top_k: int | None) -> query_pb2.QueryRequest:
    request = query_pb2.QueryRequest(query=text)
    if top_k is not None:
        request.top_k = top_k
    return request


def list_events_request(
    start: datetime | None, end: datetime | None, page_size: int, newest_first: bool
) -> ingest_pb2.ListEventsRequest:
    return ingest_pb2.ListEventsRequest(
        start_time=_timestamp(start),
        end_time=_timestamp(end),
        page_size=page_size,
        newest_first=newest_first,
    )


def summary_request(start: datetime | None, end: datetime | None) -> ingest_pb2.GetSummaryRequest:
    return ingest_pb2.GetSummaryRequest(start_time=_timestamp(start), end_time=_timestamp(end))
