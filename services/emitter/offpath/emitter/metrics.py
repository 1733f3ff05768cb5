"""The emitter's counters as Prometheus metrics (read at scrape time)."""

from __future__ import annotations

from offpath.emitter.base import EventEmitter
from offpath.kit.metrics import Sample


def emitter_samples(emitter: EventEmitter) -> list[Sample]:
    """Every emitted event is enqueued or dropped; every enqueued one is
    eventually sent or dropped: the counters add up."""
    stats = emitter.stats
    return [
        Sample(
            "offpath_emitter_events_enqueued",
            "Events accepted into the buffer.",
            "counter",
            {(): stats.enqueued},
        ),
        Sample("offpath_emitter_events_sent", "Events SQS accepted.", "counter", {(): stats.sent}),
        Sample(
            "offpath_emitter_events_dropped",
            "Events given up on, by reason.",
            "counter",
            {(reason,): n for reason, n in sorted(stats.dropped.items())},
            labels=("reason",),
        ),
        Sample(
            "offpath_emitter_sqs_requests",
            "SendMessageBatch calls, retries included.",
            "counter",
            {(): stats.requests},
        ),
        Sample(
            "offpath_emitter_sqs_retries",
            "SendMessageBatch calls that resent something.",
            "counter",
            {(): stats.retries},
        ),
        Sample(
            "offpath_emitter_buffered_events",
            "Events buffered or being sent now.",
            "gauge",
            {(): emitter.pending},
        ),
    ]
