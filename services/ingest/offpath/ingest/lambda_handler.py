"""AnalyticsIngest's ingest as an AWS Lambda function behind an SQS event
source mapping (``FunctionResponseTypes: [ReportBatchItemFailures]``):
``offpath.ingest.lambda_handler.handler``.

The core is the consumer's: each record's body gets its verdict from
:func:`offpath.ingest.decode.decode`; valid events go through
:meth:`offpath.ingest.store.EventStore.write` (claimed under the batch id,
so a redelivery or a re-sent batch counts nothing twice); a poison message,
the invalid events of a good one, a record the store refuses for good
(:func:`offpath.ingest.consumer.store_failure`) and one received more than
the queue's ``maxReceiveCount`` go to the DLQ with the reason attribute
exactly as the consumer sends them (same request, same source id, so a FIFO
DLQ keeps one copy whoever dead-lettered it), on the first receive, and the
record is then done: reporting it in ``batchItemFailures`` would only bring
it back to fail the same way.

What Lambda does instead of the consumer: it polls, hides and deletes. The
handler never calls ``ReceiveMessage``, ``DeleteMessage`` or
``ChangeMessageVisibility``; it returns the records that are not done in
``batchItemFailures`` and Lambda deletes the others. A failed record comes
back after the queue's visibility timeout and, after ``maxReceiveCount``
receives, SQS's redrive policy moves it to the DLQ.

A record is done when its events are written and whatever it had to
dead-letter was sent. It is failed (retried) when the store write failed
for a reason that is not the record's (DynamoDB unavailable, throttled past
botocore's retries; or a bug in the write) or a DLQ send failed; rewriting
is harmless. Records are handled one at a time, in order, each with its own
write, because the response is per record, so a record the store refuses
holds up no other. On a FIFO queue, once a record of a message group fails,
the later records of that group in the batch are not touched and are
reported failed too: Lambda deletes every record not reported, so one of
them done after a failure would be processed out of its group's order
(AWS's Lambda guide says to stop at the first failure; stopping only the
failing group, as Powertools for AWS Lambda's ``skip_group_on_error`` does,
keeps every group's order and lets the other groups through). Anything
else raised (a bug outside the write) fails the invocation, and Lambda
retries the whole batch.

The clients, the store and the DLQ's URL are made on a container's first
invocation and kept for the next ones (module state lives as long as the
container), from the same ``OFFPATH_*`` variables as the service
(:class:`offpath.ingest.settings.IngestSettings`; the gRPC, metrics and
polling ones are not used here). Logs are the services' JSON lines on
stdout, which Lambda sends to CloudWatch Logs.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import structlog

from offpath.ingest.consumer import (
    MAX_RECEIVES,
    EventWriter,
    dead_letter_invalid_events,
    event_ids,
    receive_limit_reason,
    store_failure,
)
from offpath.ingest.decode import Poison, decode
from offpath.ingest.settings import IngestSettings
from offpath.ingest.store import EventStore
from offpath.kit import aws
from offpath.kit.logs import configure_logging
from offpath.kit.settings import environ
from offpath.kit.sqs import (
    MAX_REASON_CHARS,
    QueueUrlClient,
    SqsSendClient,
    dead_letter_message,
    queue_url,
    send_dead_letter,
)

if TYPE_CHECKING:
    pass

log = structlog.get_logger("offpath.ingest.lambda")

# The service name in every log line (the pod's are "ingest").
LOG_SERVICE = "ingest-lambda"


class SqsDeadLetterClient(QueueUrlClient, SqsSendClient, Protocol):
    """The SQS calls the handler makes (boto3's SQS client has them): the
    DLQ's look-up once per container, and dead-letter sends."""


class BatchItemFailure(TypedDict):
    itemIdentifier: str


class BatchResponse(TypedDict):
    """What Lambda reads back with ``ReportBatchItemFailures``: the message
    ids of the records to retry (an empty list: all done)."""

    batchItemFailures: list[BatchItemFailure]


@dataclass(slots=True)
class BatchStats:
    """What one invocation did (logged as ``sqs_batch_handled``)."""

    records: int = 0
    events_written: int = 0
    dead_lettered: int = 0
    invalid_events: int = 0
    # Records reported for retry: their own write or DLQ send failed ...
    failed: int = 0
    # ... or an earlier record of their FIFO group did, so they were not touched.
    held_back: int = 0


def message_attributes(record_attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``messageAttributes`` (Lambda's shape: ``stringValue``,
    ``binaryValue`` in base64, ``dataType``) in the shape boto3 receives and
    sends them (``StringValue``, ``BinaryValue`` bytes, ``DataType``), which
    :func:`decode_message` and :func:`dead_letter_message` read. An attribute
    with neither value (list values are reserved by SQS) is left out."""
    converted: dict[str, Any] = {}
    for name, attribute in record_attributes.items():
        if not isinstance(attribute, Mapping):
            continue
        data_type = str(attribute.get("dataType", "String"))
        string = attribute.get("stringValue")
        binary = attribute.get("binaryValue")
        if isinstance(string, str):
            converted[name] = {"DataType": data_type, "StringValue": string}
        elif isinstance(binary, str):
            try:
                raw = base64.b64decode(binary, validate=True)
            except (binascii.Error, ValueError):
                continue
            converted[name] = {"DataType": data_type, "BinaryValue": raw}
    return converted


class SqsBatchHandler:
    """Handles one SQS event (a batch of records) per :meth:`handle` call;
    holds what a container keeps between invocations."""

    def __init__(
        self,
        sqs: SqsDeadLetterClient,
        store: EventWriter,
        dlq_url: str,
        *,
        max_receives: int = MAX_RECEIVES,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._sqs = sqs
        self._store = store
        self._dlq_url = dlq_url
        self._max_receives = max_receives
        self._clock_ns = clock_ns

    def handle(self, event: Mapping[str, Any]) -> BatchResponse:
        """Handle every record in order; returns the ones to retry."""
        stats = BatchStats()
        failures: list[BatchItemFailure] = []
        stopped_groups: set[str] = set()
        for record in event.get("Records", []):
            stats.records += 1
            message_id = str(record["messageId"])
            group = (record.get("attributes") or {}).get("MessageGroupId")
            if group is not None and group in stopped_groups:
                stats.held_back += 1
                failures.append({"itemIdentifier": message_id})
                continue
            if not self._handle_record(record, message_id, stats):
                stats.failed += 1
                failures.append({"itemIdentifier": message_id})
                if group is not None:
                    stopped_groups.add(group)
        log.info("sqs_batch_handled", **asdict(stats))
        return {"batchItemFailures": failures}

    def _handle_record(self, record: Mapping[str, Any], message_id: str, stats: BatchStats) -> bool:
        """Decode, write, dead-letter; True when the record is done (Lambda
        may delete it), False when it must come back."""
        body = str(record.get("body", ""))
        attributes = message_attributes(record.get("messageAttributes") or {})
        verdict = decode(body, attributes)
        if isinstance(verdict, Poison):
            # Dead-lettered at once, as the consumer does: it would fail the
            # same way on every receive and hold up its FIFO group meanwhile.
            return self._dead_letter_record(
                body, attributes, message_id, verdict.reason, verdict.kind, verdict.event_ids, stats
            )
        valid, invalid = verdict.valid, verdict.invalid
        over = receive_limit_reason(_receive_count(record), self._max_receives)
        if over is not None:
            ids = event_ids([*valid, *(event for event, _ in invalid)])
            return self._dead_letter_record(
                body, attributes, message_id, over, "receive_limit", ids, stats
            )
        try:
            stats.events_written += self._store.write(
                [(verdict.batch.batch_id, valid)], ingested_ns=self._clock_ns()
            )
        except Exception as exc:
            failure = store_failure(exc)
            if failure.kind == "refused":
                return self._dead_letter_record(
                    body,
                    attributes,
                    message_id,
                    f"the store refused the batch: {failure.detail}",
                    "store_refused",
                    event_ids(valid),
                    stats,
                )
            log.error(
                "store_write_failed",
                message_id=message_id,
                events=len(valid),
                error=failure.detail,
                kind=failure.kind,
                detail="reported in batchItemFailures; rewriting it is harmless",
            )
            return False
        if invalid:
            # Only once the valid events are written, as the consumer does:
            # a record that comes back dead-letters them then.
            if not dead_letter_invalid_events(
                self._sqs, self._dlq_url, message_id, verdict.batch, invalid
            ):
                return False
            stats.dead_lettered += 1
            stats.invalid_events += len(invalid)
        return True

    def _dead_letter_record(
        self,
        body: str,
        attributes: Mapping[str, Any],
        message_id: str,
        reason: str,
        kind: str,
        ids: Sequence[str],
        stats: BatchStats,
    ) -> bool:
        """Send the record as it came to the DLQ; True once sent (the record is done)."""
        request = dead_letter_message(
            self._dlq_url, body=body, attributes=attributes, reason=reason, source_id=message_id
        )
        if not send_dead_letter(self._sqs, request, message_id):
            return False
        stats.dead_lettered += 1
        log.warning(
            "message_dead_lettered",
            message_id=message_id,
            kind=kind,
            reason=reason[:MAX_REASON_CHARS],
            event_ids=list(ids),
        )
        return True


def _receive_count(record: Mapping[str, Any]) -> int:
    try:
        return int((record.get("attributes") or {}).get("ApproximateReceiveCount", "1"))
    except (TypeError, ValueError):
        return 1


def from_settings(settings: IngestSettings) -> SqsBatchHandler:
    """A handler with AWS clients from the standard chain, the store and the
    DLQ as ``settings`` name them (looks the DLQ's URL up unless set)."""
    store = EventStore(
        aws.dynamodb_client(),
        settings.table,
        rollup_table=settings.rollup_table or None,
        shards=settings.time_shards,
        retention_days=settings.retention_days,
        bucket_s=settings.rollup_bucket_minutes * 60,
    )
    sqs = aws.sqs_client()
    dlq = queue_url(sqs, settings.queues.dlq, settings.dlq_url)
    log.info(
        "lambda_ready",
        table=settings.table,
        rollup_table=store.rollup_table,
        dlq_url=dlq,
    )
    return SqsBatchHandler(sqs, store, dlq)


_handler: SqsBatchHandler | None = None


def handler(event: Mapping[str, Any], context: object) -> BatchResponse:
    """The Lambda entry point. A bad setting raises at the first invocation
    (the message names the variable), as the service fails at start-up."""
    global _handler
    if _handler is None:
        settings = IngestSettings.from_env(environ())
        configure_logging(LOG_SERVICE, settings.log_level)
        _handler = from_settings(settings)
    return _handler.handle(event)
