"""Privacy by default, end to end: QueryService with its default settings, SQS (the local
endpoint), AnalyticsIngest and DynamoDB as separate processes; what the read API gives
back of a query's text is its redacted form, and a rejected over-long query keeps only a
short prefix."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from offpath.client import OffpathClient
from offpath.emitter.redact import REJECTED_QUERY_CHARS, TRUNCATED_MARK
from offpath.testing.waits import wait_until

FRESHNESS_BUDGET_S = 5.0
ADDRESS = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"


def test_query_with_an_email_address_is_stored_with_the_address_masked(
    client: OffpathClient,
) -> None:
    """A Query holding an e-mail address and a phone number is answered as usual, and its
    event, read back through GetEvent and ListEvents, and its top-query count in
    GetSummary, hold the text with both masked, never the address or the number."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    response = client.query(f"Is she free for a Kubernetes role? Mail {ADDRESS} or {PHONE}")
    assert response.matched_skills
    stored = client.wait_for_event(response.event_id, timeout=FRESHNESS_BUDGET_S)
    masked = "Is she free for a Kubernetes role? Mail [email] or [phone]"
    assert stored.event.query == masked
    listed = [e for e in client.list_events(start=since) if e.event_id == response.event_id]
    assert [e.query for e in listed] == [masked]

    def counted() -> bool:
        texts = [q.text for q in client.summary(start=since).top_queries]
        return masked.casefold() in texts

    wait_until(counted, timeout=FRESHNESS_BUDGET_S)
    texts = " ".join(q.text for q in client.summary(start=since).top_queries)
    assert ADDRESS not in texts
    assert "7946" not in texts


def test_rejected_long_query_is_stored_as_a_short_redacted_prefix(
    client: OffpathClient,
) -> None:
    """A ~196 KB query is refused with INVALID_ARGUMENT, and its event keeps at most the
    first 64 characters, redacted, and a mark saying the text was cut."""
    text = "my SSN is 078-05-1120, am I hired? " + "please " * 28_000
    assert len(text) > 190_000
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        client.query(text)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 2048 are allowed" in (error.details() or "")
    trailers = {item.key: item.value for item in error.trailing_metadata() or ()}
    stored = client.wait_for_event(str(trailers["offpath-event-id"]), timeout=FRESHNESS_BUDGET_S)
    assert time.monotonic() - started < FRESHNESS_BUDGET_S + 5.0
    query = stored.event.query
    assert stored.event.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert query.startswith("my SSN is [number], am I hired? please please")
    assert query.endswith(TRUNCATED_MARK)
    assert len(query) <= REJECTED_QUERY_CHARS + len(TRUNCATED_MARK)
    assert "078-05-1120" not in query
