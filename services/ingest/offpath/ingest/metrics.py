"""The consumer's counters as Prometheus metrics (read at scrape time)."""

from __future__ import annotations

from offpath.ingest.consumer import ConsumerStats
from offpath.kit.metrics import Sample

_COUNTERS = (
    ("received", "offpath_ingest_messages_received", "SQS messages received."),
    ("deleted", "offpath_ingest_messages_deleted", "SQS messages deleted after handling."),
    ("events_written", "offpath_ingest_events_written", "Events written to DynamoDB."),
    ("dead_lettered", "offpath_ingest_dead_lettered", "Messages sent to the dead-letter queue."),
    ("invalid_events", "offpath_ingest_invalid_events", "Invalid events split off to the DLQ."),
    ("write_failures", "offpath_ingest_write_failures", "Batches whose DynamoDB write failed."),
    ("poll_errors", "offpath_ingest_poll_errors", "Receive or processing errors."),
)


def consumer_samples(stats: ConsumerStats) -> list[Sample]:
    return [
        Sample(name, help_text, "counter", {(): getattr(stats, field)})
        for field, name, help_text in _COUNTERS
    ]
