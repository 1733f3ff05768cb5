"""The emitter's counters as Prometheus metrics (read at scrape time)."""

from __future__ import annotations

from offpath.emitter.base import EventEmitter
from offpath.emitter.sink import CALL_BUCKETS_S, OUTCOMES
from offpath.kit.metrics import HistogramSample, Sample

# Every reason an event can be dropped for, so each series exists from the
# start at 0 (a rate() over a series that appears mid-way misses its start).
DROP_REASONS = (
    # at emit(): never enqueued
    "queue_full",
    "shutdown",
    "unencodable",
    # after: enqueued, then given up on
    "too_large",
    "rejected",
    "send_failed",
    "export_error",
    "shutdown_unsent",
    "sender_lost",
    "spool_full",
    "undecodable",
    "torn_frame",
    "corrupt_stream",
)


def emitter_samples(emitter: EventEmitter) -> list[Sample | HistogramSample]:
    """Every emitted event is enqueued or dropped; every enqueued one is
    eventually sent, dropped or spooled: the counters add up."""
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
            {
                (reason,): stats.dropped[reason]
                for reason in sorted({*DROP_REASONS, *stats.dropped})
            },
            labels=("reason",),
        ),
        Sample(
            "offpath_emitter_events_spooled",
            "Events kept in the on-disk spool because they could not be sent.",
            "counter",
            {(): stats.spooled},
        ),
        Sample(
            "offpath_emitter_events_replayed",
            "Events sent from the spool (enqueued by an earlier sender or process).",
            "counter",
            {(): stats.replayed},
        ),
        Sample(
            "offpath_emitter_sqs_requests",
            "SendMessageBatch calls, retries included, by outcome, counted as each ends "
            "(during an outage too).",
            "counter",
            {
                (outcome,): stats.outcomes[outcome]
                for outcome in sorted({*OUTCOMES, *stats.outcomes})
            },
            labels=("outcome",),
        ),
        Sample(
            "offpath_emitter_sqs_retries",
            "SendMessageBatch calls that resent something, counted as each is scheduled.",
            "counter",
            {(): stats.retries},
        ),
        Sample(
            "offpath_emitter_sqs_retrying_events",
            "Events whose SendMessageBatch failed and that wait for another attempt now.",
            "gauge",
            {(): stats.retrying},
        ),
        Sample(
            "offpath_emitter_events_recovered",
            "Events found at start in the write-ahead logs of senders that died "
            "(kill -9, crash), kept in the spool to be sent again.",
            "counter",
            {(): stats.recovered},
        ),
        Sample(
            "offpath_emitter_spool_files",
            "Spool files waiting to be replayed.",
            "gauge",
            {(): stats.spool_files},
        ),
        Sample(
            "offpath_emitter_spool_bytes",
            "Bytes of the spool files waiting to be replayed.",
            "gauge",
            {(): stats.spool_bytes},
        ),
        HistogramSample(
            "offpath_emitter_sqs_request_duration_seconds",
            "SendMessageBatch calls by how long they took, failed ones included.",
            CALL_BUCKETS_S,
            tuple(stats.latencies.counts),
            stats.latencies.sum_ns / 1e9,
        ),
        Sample(
            "offpath_emitter_buffered_events",
            "Events buffered or being sent now.",
            "gauge",
            {(): emitter.pending},
        ),
    ]
