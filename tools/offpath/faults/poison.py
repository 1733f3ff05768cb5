"""Poison messages of every kind, as a producer that went wrong (or someone
with write access to the queue) could send them.

Each :class:`Poison` is a ``SendMessage`` request for the analytics queue and
what AnalyticsIngest must do with it: dead-letter the whole message with a
reason (``"message"``), or dead-letter the invalid events and store the valid
ones beside them (``"events"``, whose good event ids are given).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from offpath.kit.ids import new_id
from offpath.kit.sqs import (
    MESSAGE_ATTRIBUTES,
    SCHEMA_ATTRIBUTE,
    SCHEMA_NAME,
    VERSION_ATTRIBUTE,
    encode_batch,
    fifo_fields,
)
from offpath.v1 import analytics_pb2

# Larger than DynamoDB's 400 KB item limit, inside SQS's 1 MiB message limit.
OVERSIZE_QUERY_BYTES = 450 * 1024


@dataclass(frozen=True)
class Poison:
    """One crafted message and what must become of it."""

    kind: str
    request: dict[str, Any]
    outcome: Literal["message", "events"]
    good_ids: list[str] = field(default_factory=list)


def event(
    event_id: str | None = None, *, query: str = "poison neighbour"
) -> analytics_pb2.AnalyticsEvent:
    """A valid event (now, a fresh id) unless told otherwise."""
    made = analytics_pb2.AnalyticsEvent(
        event_id=event_id if event_id is not None else new_id(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=query,
        model="faults",
        producer_id="faults-poison",
    )
    made.occurred_at.FromNanoseconds(time.time_ns())
    return made


def batch(
    *events: analytics_pb2.AnalyticsEvent, batch_id: str | None = None
) -> analytics_pb2.AnalyticsBatch:
    made = analytics_pb2.AnalyticsBatch(
        batch_id=new_id() if batch_id is None else batch_id,
        producer_id="faults-poison",
        events=list(events),
    )
    made.created_at.GetCurrentTime()
    return made


def poison_messages(queue_url: str, group_id: str) -> list[Poison]:
    """Every kind, each with a fresh deduplication id, in the producer's
    message group (``group_id``) so a message that is not set aside at once
    holds up the good ones behind it."""

    def message(
        body: str, attributes: dict[str, Any] | None = MESSAGE_ATTRIBUTES
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "QueueUrl": queue_url,
            "MessageBody": body,
            **fifo_fields(queue_url, group_id=group_id, dedup_id=new_id()),
        }
        if attributes:
            request["MessageAttributes"] = attributes
        return request

    good = encode_batch(batch(event()))
    wrong_schema = {
        **MESSAGE_ATTRIBUTES,
        SCHEMA_ATTRIBUTE: {"DataType": "String", "StringValue": "other.v1.Thing"},
    }
    wrong_version = {
        **MESSAGE_ATTRIBUTES,
        VERSION_ATTRIBUTE: {"DataType": "String", "StringValue": "2"},
    }
    neighbour_bad_id, neighbour_no_time = event(), event()
    no_time = event()
    no_time.ClearField("occurred_at")
    not_a_batch = base64.b64encode(event().SerializeToString()).decode()
    return [
        Poison("garbage body", message("!!! this is not base64 {}"), "message"),
        Poison(
            "base64, not protobuf",
            message(base64.b64encode(b"\xff\xfe\x00garbage" * 8).decode()),
            "message",
        ),
        Poison("wrong schema", message(good, wrong_schema), "message"),
        Poison("wrong schema version", message(good, wrong_version), "message"),
        Poison("no schema attributes", message(good, None), "message"),
        Poison(
            f"wrong message type ({SCHEMA_NAME} expected, an AnalyticsEvent sent)",
            message(not_a_batch),
            "message",
        ),
        Poison(
            "batch without batch_id", message(encode_batch(batch(event(), batch_id=""))), "message"
        ),
        Poison(
            "invalid event id beside a good event",
            message(encode_batch(batch(event("not-a-uuid"), neighbour_bad_id))),
            "events",
            [neighbour_bad_id.event_id],
        ),
        Poison(
            "event without occurred_at beside a good event",
            message(encode_batch(batch(no_time, neighbour_no_time))),
            "events",
            [neighbour_no_time.event_id],
        ),
        Poison(
            "oversize event (450 KB, over DynamoDB's item limit)",
            message(encode_batch(batch(event(query="x" * OVERSIZE_QUERY_BYTES)))),
            "message",
        ),
    ]
