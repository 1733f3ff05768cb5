"""Query over gRPC, then read the analytics event back from AnalyticsIngest."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from offpath.client import OffpathClient
from offpath.v1 import ingest_pb2, ingest_pb2_grpc

FRESHNESS_BUDGET_S = 5.0


def test_query_answers_and_its_event_is_readable_within_5s(client: OffpathClient) -> None:
    """A Query answers with skills and an event id, and that event is stored within 5 s
    with what the reply said."""
    response = client.query("kubernetes")
    assert response.matched_skills[0].name == "Kubernetes"
    assert response.answer
    assert response.event_id
    started = time.monotonic()
    stored = client.wait_for_event(response.event_id, timeout=FRESHNESS_BUDGET_S)
    assert time.monotonic() - started < FRESHNESS_BUDGET_S
    event = stored.event
    assert event.event_id == response.event_id
    assert event.query == "kubernetes"
    assert event.method == "/offpath.v1.QueryService/Query"
    assert [s.name for s in event.matched_skills] == [s.name for s in response.matched_skills]
    assert event.model == response.model
    assert event.token_count == response.token_count
    assert event.status_code == 0
    assert stored.batch_id


def test_invalid_query_is_invalid_argument_and_still_recorded(client: OffpathClient) -> None:
    """An empty query gets INVALID_ARGUMENT with a useful message, and its event is
    recorded with that status, found through the trailing metadata's event id."""
    with pytest.raises(grpc.RpcError) as caught:
        client.query("   ")
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must not be empty" in (error.details() or "")
    trailers = {item.key: item.value for item in error.trailing_metadata() or ()}
    event_id = str(trailers["offpath-event-id"])
    stored = client.wait_for_event(event_id, timeout=FRESHNESS_BUDGET_S)
    assert stored.event.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_top_k_out_of_range_is_invalid_argument(client: OffpathClient) -> None:
    """top_k beyond 20 is rejected with the allowed range in the message."""
    with pytest.raises(grpc.RpcError) as caught:
        client.query("python", top_k=99)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "between 1 and 20" in (caught.value.details() or "")


def test_get_event_errors(client: OffpathClient) -> None:
    """GetEvent says INVALID_ARGUMENT for a malformed id and NOT_FOUND for an unknown one."""
    with pytest.raises(grpc.RpcError) as bad:
        client.get_event("not-an-id")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        client.get_event("01890000-0000-7000-8000-000000000000")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_events_and_summary_see_the_queries(client: OffpathClient) -> None:
    """ListEvents pages through the stored events and GetSummary counts them."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = [client.query(f"python question {i}").event_id for i in range(5)]
    client.wait_for_event(ids[-1], timeout=FRESHNESS_BUDGET_S)
    for event_id in ids:
        client.wait_for_event(event_id, timeout=FRESHNESS_BUDGET_S)
    listed = [e.event_id for e in client.list_events(start=since, page_size=2)]
    assert [i for i in listed if i in ids] == ids
    summary = client.summary(start=since)
    assert summary.event_count >= 5
    assert any(s.name == "Python" for s in summary.top_skills)


def test_list_events_rejects_a_foreign_page_token(client: OffpathClient) -> None:
    """A page token the service did not issue is INVALID_ARGUMENT, not a crash."""
    stub = ingest_pb2_grpc.AnalyticsIngestStub(grpc.insecure_channel(client.ingest_target))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListEvents(ingest_pb2.ListEventsRequest(page_token="garbage"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")
