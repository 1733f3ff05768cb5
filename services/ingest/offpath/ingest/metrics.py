"""The consumer's counters and ingest-lag histogram as Prometheus metrics
(read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from offpath.ingest.consumer import LAG_BUCKETS_S, Consumer, ConsumerStats, LagHistogram
from offpath.kit.metrics import Sample, families

_COUNTERS = (
    ("received", "offpath_ingest_messages_received", "SQS messages received."),
    ("deleted", "offpath_ingest_messages_deleted", "SQS messages deleted after handling."),
    ("events_written", "offpath_ingest_events_written", "Events written to DynamoDB."),
    ("dead_lettered", "offpath_ingest_dead_lettered", "Messages sent to the dead-letter queue."),
    ("invalid_events", "offpath_ingest_invalid_events", "Invalid events split off to the DLQ."),
    ("write_failures", "offpath_ingest_write_failures", "Batches whose DynamoDB write failed."),
    ("poll_errors", "offpath_ingest_poll_errors", "Receive or processing errors."),
    (
        "delete_retries",
        "offpath_ingest_delete_retries",
        "DeleteMessageBatch entries sent again after failing on SQS's side.",
    ),
    (
        "undeleted",
        "offpath_ingest_messages_undeleted",
        "Handled messages left undeleted (receipt handle expired or retries spent); redelivered.",
    ),
    (
        "visibility_extended",
        "offpath_ingest_visibility_extended",
        "Messages whose visibility timeout was extended while being processed.",
    ),
    (
        "store_backoffs",
        "offpath_ingest_store_backoffs",
        "Messages put back on the queue with a backoff delay after a failed write.",
    ),
    (
        "handed_back",
        "offpath_ingest_messages_handed_back",
        "Messages received during shutdown and made visible again at once.",
    ),
)
LAG_METRIC = "offpath_ingest_lag_seconds"


DEAD_LETTERS_METRIC = "offpath_ingest_dead_letters"


def consumer_samples(stats: ConsumerStats) -> list[Sample]:
    return [
        *(
            Sample(name, help_text, "counter", {(): getattr(stats, field)})
            for field, name, help_text in _COUNTERS
        ),
        Sample(
            DEAD_LETTERS_METRIC,
            "Dead letters sent, by why: schema, undecodable, foreign (another message type), "
            "empty, no_valid_events, invalid_events (split off a good batch), store_refused, "
            "receive_limit.",
            "counter",
            {(kind,): count for kind, count in stats.dead_letter_kinds.items()},
            labels=("kind",),
        ),
    ]


def lag_family(lag: LagHistogram) -> HistogramMetricFamily:
    """The ingest-lag histogram: seconds from an event's occurred_at to its
    write, one observation per written event (a redelivery observes again)."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*LAG_BUCKETS_S, float("inf")), lag.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(
        LAG_METRIC,
        "Seconds from an event's occurred_at to its write into DynamoDB.",
        buckets=buckets,
        sum_value=lag.sum_s,
    )


class IngestCollector(Collector):
    """Everything AnalyticsIngest exports, read from the consumer at each scrape."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def collect(self) -> Iterable[Metric]:
        yield from families(consumer_samples(self._consumer.stats))
        yield lag_family(self._consumer.lag)
