"""The SQS sink: packs events into ``AnalyticsBatch`` messages and sends
them with ``SendMessageBatch``.

Runs on the emitter's sender thread, never on the event loop. Packing is
bounded by events per message and by bytes (per message and per call: SQS
limits both to the same size). Every attempt is this class's own (its
client makes one attempt per call, botocore retries nothing), so each one is
counted as it ends, by outcome (:data:`~offpath.emitter.sink.OUTCOMES`), in
:attr:`SqsSink.progress`: a scrape during an outage sees the attempts and
retries move, and how many events wait for a retry. Throttling, 5xx,
connection errors and the ``Failed`` entries of a partly failed batch are
retried (only the failed entries) with full-jitter backoff until the
deadline. On FIFO queues the batch id is the MessageDeduplicationId, so a
resend after a lost response is not a duplicate; the producer id is the
MessageGroupId.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Unpack

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from offpath.emitter.settings import MESSAGES_PER_CALL, EmitterSettings
from offpath.emitter.sink import ExportResult, SendProgress
from offpath.kit import aws
from offpath.kit.backoff import Backoff
from offpath.kit.ids import new_id
from offpath.kit.sqs import (
    MESSAGE_ATTRIBUTES,
    MESSAGE_ATTRIBUTES_SIZE,
    QueueUrlClient,
    encode_batch,
    encoded_size,
    fifo_fields,
    queue_url,
)
from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        SendMessageBatchRequestEntryTypeDef,
        SendMessageBatchRequestTypeDef,
        SendMessageBatchResultTypeDef,
    )

log = structlog.get_logger("offpath.emitter.sqs")

# The first retry waits up to 0.4 s, doubling to at most 5 s.
_BACKOFF_BASE_S = 0.4
_BACKOFF_CAP_S = 5.0
# Error codes SQS (and the AWS query protocol) use for throttling.
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "AWS.SimpleQueueService.RequestThrottled",
        "TooManyRequestsException",
        "SlowDown",
    }
)


def call_outcome(exc: BotoCoreError | ClientError) -> str:
    """What a failed call came to: ``throttled``, ``server_error`` (5xx),
    ``client_error`` (another error response) or ``unreachable`` (no
    response: refused, timed out, cut)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if error.get("Code") in _THROTTLING_CODES or status == 429:
            return "throttled"
        if isinstance(status, int) and status >= 500:
            return "server_error"
        return "client_error"
    return "unreachable"


def _default_client() -> SqsSendClient:
    # One attempt per call: the sink's own loop retries, counting each attempt.
    return aws.sqs_client(aws.client_config(max_attempts=1))


class SqsSendClient(QueueUrlClient, Protocol):
    """The SQS calls a producer makes (boto3's SQS client has them)."""

    def send_message_batch(
        self, **kwargs: Unpack[SendMessageBatchRequestTypeDef]
    ) -> SendMessageBatchResultTypeDef: ...

    def close(self) -> None: ...


def _varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


@dataclass(frozen=True, slots=True)
class _Entry:
    entry: SendMessageBatchRequestEntryTypeDef
    batch: analytics_pb2.AnalyticsBatch
    size: int  # bytes SQS counts: body + attributes

    @property
    def events(self) -> int:
        return len(self.batch.events)


class SqsSink:
    """Sends events to one SQS queue (FIFO or standard)."""

    def __init__(
        self,
        settings: EmitterSettings,
        *,
        client_factory: Callable[[], SqsSendClient] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._client_factory = client_factory or _default_client
        # Every call as it ends (read by the metrics while an outage lasts).
        self.progress = SendProgress()
        self._client: SqsSendClient | None = None
        self._queue_url = settings.queue_url
        self._sleep = sleep
        self._clock = clock
        self._backoff = Backoff(_BACKOFF_BASE_S, _BACKOFF_CAP_S, rng)
        # batch_id (field 1), producer_id (2), created_at (4), with tags and lengths.
        producer = len(settings.producer_id.encode())
        self._batch_overhead = 2 + 36 + 1 + _varint_len(producer) + producer + 2 + 12

    # -- packing ------------------------------------------------------------

    def pack(
        self, events: Sequence[analytics_pb2.AnalyticsEvent]
    ) -> tuple[list[analytics_pb2.AnalyticsBatch], int]:
        """Events into batches within the count and byte limits. Returns the
        batches and how many events were too large for any message."""
        budget = self._settings.max_message_bytes - MESSAGE_ATTRIBUTES_SIZE
        limit = self._settings.events_per_message
        batches: list[analytics_pb2.AnalyticsBatch] = []
        current: list[analytics_pb2.AnalyticsEvent] = []
        size = self._batch_overhead
        too_large = 0
        for event in events:
            n = event.ByteSize()
            framed = 1 + _varint_len(n) + n
            if encoded_size(self._batch_overhead + framed) > budget:
                too_large += 1
                log.error("event_too_large", event_id=event.event_id, bytes=n)
                continue
            if current and (len(current) >= limit or encoded_size(size + framed) > budget):
                batches.append(self._batch(current))
                current, size = [], self._batch_overhead
            current.append(event)
            size += framed
        if current:
            batches.append(self._batch(current))
        return batches, too_large

    def _batch(self, events: list[analytics_pb2.AnalyticsEvent]) -> analytics_pb2.AnalyticsBatch:
        batch = analytics_pb2.AnalyticsBatch(
            batch_id=new_id(), producer_id=self._settings.producer_id, events=events
        )
        batch.created_at.GetCurrentTime()
        return batch

    def _entries(self, batches: list[analytics_pb2.AnalyticsBatch]) -> list[list[_Entry]]:
        """Messages grouped into calls: at most 10 each, and the sum of their
        sizes within the per-call payload limit."""
        calls: list[list[_Entry]] = []
        current: list[_Entry] = []
        total = 0
        for index, batch in enumerate(batches):
            body = encode_batch(batch)
            # The ignore: mypy's strict checks want every optional key of the
            # entry type named in some ** item; FifoFields names only its two.
            entry: SendMessageBatchRequestEntryTypeDef = {
                "Id": str(index),
                "MessageBody": body,
                "MessageAttributes": MESSAGE_ATTRIBUTES,
                **fifo_fields(  # type: ignore[typeddict-item]
                    self._queue_url or self._settings.queue_name,
                    group_id=self._settings.producer_id,
                    dedup_id=batch.batch_id,
                ),
            }
            item = _Entry(entry, batch, len(body) + MESSAGE_ATTRIBUTES_SIZE)
            if current and (
                len(current) >= MESSAGES_PER_CALL
                or total + item.size > self._settings.max_message_bytes
            ):
                calls.append(current)
                current, total = [], 0
            current.append(item)
            total += item.size
        if current:
            calls.append(current)
        return calls

    # -- sending --------------------------------------------------------------

    def export(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult:
        result = ExportResult()
        batches, too_large = self.pack(events)
        if too_large:
            result.dropped["too_large"] += too_large
        for call in self._entries(batches):
            result.merge(self._send(call, deadline))
        log.debug(
            "batch_flushed",
            events=len(events),
            sent=result.sent,
            requests=result.requests,
            dropped=dict(result.dropped),
        )
        return result

    def _send(self, call: list[_Entry], deadline: float) -> ExportResult:
        result = ExportResult()
        progress = self.progress
        pending = {item.entry["Id"]: item for item in call}
        waiting = 0  # events of this call counted in progress.retrying
        attempt = 0
        try:
            while True:
                error: str | None = None
                outcome: str | None = None  # None: no SendMessageBatch made (the look-up failed)
                try:
                    client = self._client or self._connect()
                    url = self._queue_url or self._resolve(client)
                    outcome = "ok"
                    result.requests += 1
                    called = time.perf_counter_ns()
                    try:
                        response = client.send_message_batch(
                            QueueUrl=url, Entries=[item.entry for item in pending.values()]
                        )
                    finally:
                        elapsed = time.perf_counter_ns() - called
                        result.latencies.observe(elapsed)
                        progress.latencies.observe(elapsed)
                except (BotoCoreError, ClientError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if outcome is not None:
                        outcome = call_outcome(exc)
                else:
                    for ok in response.get("Successful", []):
                        item = pending.pop(ok["Id"], None)
                        if item is not None:
                            result.sent += item.events
                    failed = response.get("Failed", [])
                    for failure in failed:
                        if failure.get("SenderFault"):
                            item = pending.pop(failure["Id"], None)
                            if item is not None:
                                result.dropped["rejected"] += item.events
                                log.error(
                                    "sqs_entry_rejected",
                                    code=failure.get("Code"),
                                    message=failure.get("Message"),
                                    events=item.events,
                                )
                    if pending or failed:
                        outcome = "partial"
                    if pending:
                        error = (
                            "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                            or "entries neither successful nor failed"
                        )
                if outcome is not None:
                    result.outcomes[outcome] += 1
                    progress.outcomes[outcome] += 1
                events = sum(item.events for item in pending.values())
                # The gauge follows what of this call still waits for SQS.
                progress.retrying += events - waiting
                waiting = events
                if not pending:
                    return result
                attempt += 1
                delay = self._backoff.delay(attempt)
                if self._clock() + delay > deadline:
                    result.dropped["send_failed"] += events
                    result.unsent.extend(e for item in pending.values() for e in item.batch.events)
                    log.error("sqs_send_gave_up", attempts=attempt, events=events, error=error)
                    return result
                log.warning(
                    "sqs_send_retry",
                    attempt=attempt,
                    events=events,
                    outcome=outcome,
                    delay_s=round(delay, 3),
                    error=error,
                )
                result.retries += 1
                progress.retries += 1
                self._sleep(delay)
        finally:
            progress.retrying -= waiting

    def prepare(self) -> None:
        """Make the client and look up the queue URL now. The first call pays
        botocore's one-time set-up (several ms of CPU); paying it at start-up
        keeps it off the first flush, when requests are already being served.
        Raises what the look-up raises; sending later retries by itself."""
        client = self._client or self._connect()
        if self._queue_url is None:
            self._resolve(client)

    def _connect(self) -> SqsSendClient:
        self._client = self._client_factory()
        return self._client

    def _resolve(self, client: SqsSendClient) -> str:
        self._queue_url = queue_url(client, self._settings.queue_name)
        return self._queue_url

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


__all__ = ["SqsSendClient", "SqsSink"]
