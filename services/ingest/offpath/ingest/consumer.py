"""The SQS consumer: long-polls the queue, writes events, then acknowledges.

A message is deleted only after all of its events are durably written (at
least once in; the store's key makes the effect exactly once). A message
that can never be processed (wrong schema, not base64, not an
AnalyticsBatch) is sent to the dead-letter queue with the reason in the
``offpath-dlq-reason`` attribute and deleted at once, so it does not wait
out three receives or hold up its FIFO group. Invalid events inside a good
batch are split off into their own dead-lettered batch; the rest are written.
When writing fails, nothing of the good messages is deleted: SQS redelivers
them, and after ``maxReceiveCount`` receives its redrive policy moves them
to the DLQ.

Runs on its own thread (boto3 is synchronous): :meth:`Consumer.run` looks
the queues up (retrying while the endpoint is not there yet), then polls
until ``stop`` is set, backing off after errors.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Unpack

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from offpath.ingest.store import EventStore, WriteError
from offpath.kit.backoff import Backoff
from offpath.kit.ids import is_uuid, new_id
from offpath.kit.sqs import (
    MAX_REASON_CHARS,
    MESSAGE_ATTRIBUTES,
    PoisonMessage,
    QueueNames,
    QueueUrlClient,
    dead_letter_message,
    decode_message,
    encode_batch,
    queue_url,
)
from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        DeleteMessageBatchRequestTypeDef,
        DeleteMessageBatchResultTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
        SendMessageRequestTypeDef,
        SendMessageResultTypeDef,
    )

log = structlog.get_logger("offpath.ingest.consumer")

_MAX_MESSAGES = 10
# After a failed poll: up to 1 s, doubling to 20 s. After a failed queue
# look-up (the endpoint not up yet): up to 0.5 s, doubling to 30 s.
_POLL_BACKOFF = (1.0, 20.0)
_LOOKUP_BACKOFF = (0.5, 30.0)


class SqsConsumeClient(QueueUrlClient, Protocol):
    """The SQS calls the consumer makes (boto3's SQS client has them)."""

    def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef: ...

    def send_message(
        self, **kwargs: Unpack[SendMessageRequestTypeDef]
    ) -> SendMessageResultTypeDef: ...

    def delete_message_batch(
        self, **kwargs: Unpack[DeleteMessageBatchRequestTypeDef]
    ) -> DeleteMessageBatchResultTypeDef: ...


@dataclass(frozen=True, slots=True)
class Queues:
    """Where the consumer reads and where it dead-letters: names, and URLs
    when configured (``OFFPATH_SQS_QUEUE_URL`` / ``OFFPATH_SQS_DLQ_URL``)."""

    names: QueueNames
    queue_url: str | None = None
    dlq_url: str | None = None


@dataclass(slots=True)
class ConsumerStats:
    received: int = 0
    deleted: int = 0
    events_written: int = 0
    dead_lettered: int = 0
    invalid_events: int = 0
    write_failures: int = 0
    poll_errors: int = 0


@dataclass(slots=True)
class _Decoded:
    message: dict[str, Any]
    batch: analytics_pb2.AnalyticsBatch
    valid: list[analytics_pb2.AnalyticsEvent] = field(default_factory=list)
    invalid: list[tuple[analytics_pb2.AnalyticsEvent, str]] = field(default_factory=list)


def event_problem(event: analytics_pb2.AnalyticsEvent) -> str | None:
    """Why an event cannot be stored, or None."""
    if not is_uuid(event.event_id):
        return f"event_id {event.event_id[:64]!r} is not a UUID"
    if event.occurred_at.seconds <= 0:
        return f"event {event.event_id} has no occurred_at"
    return None


class Consumer:
    """Moves batches from the queue into the store."""

    def __init__(
        self,
        sqs: SqsConsumeClient,
        store: EventStore,
        queues: Queues,
        *,
        wait_seconds: int = 10,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: Callable[[], float] = random.random,
        stats: ConsumerStats | None = None,
    ) -> None:
        self._sqs = sqs
        self._store = store
        self._queues = queues
        self._queue_url = queues.queue_url
        self._dlq_url = queues.dlq_url
        self._wait_seconds = wait_seconds
        self._clock_ns = clock_ns
        self._poll_backoff = Backoff(*_POLL_BACKOFF, rng)
        self._lookup_backoff = Backoff(*_LOOKUP_BACKOFF, rng)
        self.stats = stats or ConsumerStats()

    def run(self, stop: threading.Event) -> None:
        """Look the queues up, then poll until ``stop`` is set; errors back
        off, they never end the loop."""
        if not self.resolve(stop):
            return
        failures = 0
        log.info("consumer_started", queue_url=self._queue_url, wait_s=self._wait_seconds)
        while not stop.is_set():
            try:
                self.poll_once()
                failures = 0
            except Exception as exc:
                failures += 1
                self.stats.poll_errors += 1
                delay = self._poll_backoff.delay(failures)
                log.error(
                    "consumer_poll_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    failures=failures,
                    retry_in_s=round(delay, 2),
                )
                stop.wait(delay)
        log.info("consumer_stopped")

    def resolve(self, stop: threading.Event) -> bool:
        """Find both queues' URLs, retrying until found or ``stop`` is set
        (the endpoint may start after us). False when stopped first."""
        attempt = 0
        while not stop.is_set():
            try:
                self._queue_url = queue_url(
                    self._sqs, self._queues.names.queue, self._queues.queue_url
                )
                self._dlq_url = queue_url(self._sqs, self._queues.names.dlq, self._queues.dlq_url)
                return True
            except (BotoCoreError, ClientError) as exc:
                attempt += 1
                delay = self._lookup_backoff.delay(attempt)
                log.error(
                    "queue_lookup_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                )
                stop.wait(delay)
        return False

    def _urls(self) -> tuple[str, str]:
        if self._queue_url is None or self._dlq_url is None:
            raise RuntimeError("queues not resolved: call resolve() (run() does) first")
        return self._queue_url, self._dlq_url

    def poll_once(self) -> int:
        """One receive and its processing; returns how many messages came."""
        queue, _ = self._urls()
        response = self._sqs.receive_message(
            QueueUrl=queue,
            MaxNumberOfMessages=_MAX_MESSAGES,
            WaitTimeSeconds=self._wait_seconds,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
        )
        messages: list[Any] = list(response.get("Messages", []))
        if messages:
            self.process(messages)
        return len(messages)

    def process(self, messages: Sequence[dict[str, Any]]) -> None:
        """Write what can be written, dead-letter what never can, and delete
        each message once it is fully handled."""
        self.stats.received += len(messages)
        decoded: list[_Decoded] = []
        handled: list[dict[str, Any]] = []
        for message in messages:
            try:
                batch = decode_message(
                    message.get("Body", ""), message.get("MessageAttributes", {})
                )
            except PoisonMessage as poison:
                if self._dead_letter_message(message, poison.reason):
                    handled.append(message)
                continue
            item = _Decoded(message, batch)
            for event in batch.events:
                problem = event_problem(event)
                if problem is None:
                    item.valid.append(event)
                else:
                    item.invalid.append((event, problem))
            decoded.append(item)

        events = sum(len(d.valid) for d in decoded)
        try:
            written = (
                self._store.write(
                    ((d.batch.batch_id, d.valid) for d in decoded), ingested_ns=self._clock_ns()
                )
                if events
                else 0
            )
        except WriteError as exc:
            self.stats.write_failures += 1
            log.error("events_write_failed", error=str(exc), messages=len(decoded), events=events)
            written = -1
        if written >= 0:
            self.stats.events_written += written
            for d in decoded:
                if d.invalid and not self._dead_letter_events(d):
                    continue  # not deleted: comes back, and its events overwrite
                handled.append(d.message)
            if written:
                log.info("events_ingested", events=written, messages=len(decoded))
        self._delete(handled)

    # -- dead letters --------------------------------------------------------

    def _dead_letter_message(self, message: dict[str, Any], reason: str) -> bool:
        ok = self._send_dead_letter(
            message.get("Body", ""),
            message.get("MessageAttributes", {}),
            reason,
            message["MessageId"],
        )
        if ok:
            log.warning("message_dead_lettered", message_id=message["MessageId"], reason=reason)
        return ok

    def _dead_letter_events(self, decoded: _Decoded) -> bool:
        batch = analytics_pb2.AnalyticsBatch(
            batch_id=new_id(),
            producer_id=decoded.batch.producer_id,
            events=[event for event, _ in decoded.invalid],
        )
        batch.created_at.GetCurrentTime()
        reason = "invalid events: " + "; ".join(problem for _, problem in decoded.invalid)
        ok = self._send_dead_letter(
            encode_batch(batch),
            MESSAGE_ATTRIBUTES,
            reason,
            # Stable across redeliveries, so a FIFO DLQ keeps one copy.
            f"{decoded.message['MessageId']}-invalid",
        )
        if ok:
            self.stats.invalid_events += len(decoded.invalid)
            log.warning(
                "events_dead_lettered",
                message_id=decoded.message["MessageId"],
                events=len(decoded.invalid),
                reason=reason[:MAX_REASON_CHARS],
            )
        return ok

    def _send_dead_letter(
        self, body: str, attributes: Mapping[str, Any], reason: str, source_id: str
    ) -> bool:
        _, dlq = self._urls()
        request = dead_letter_message(
            dlq, body=body, attributes=attributes, reason=reason, source_id=source_id
        )
        try:
            self._sqs.send_message(**request)
        except (BotoCoreError, ClientError) as exc:
            # Left on the queue; SQS's redrive policy is the backstop.
            log.error("dead_letter_failed", source_id=source_id, error=str(exc))
            return False
        self.stats.dead_lettered += 1
        return True

    def _delete(self, messages: Sequence[dict[str, Any]]) -> None:
        if not messages:
            return
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        queue, _ = self._urls()
        try:
            response = self._sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            # They come back after the visibility timeout; writes are idempotent.
            log.error("delete_failed", messages=len(messages), error=str(exc))
            return
        failed = response.get("Failed", [])
        self.stats.deleted += len(messages) - len(failed)
        for failure in failed:
            log.error(
                "delete_failed",
                id=failure.get("Id"),
                code=failure.get("Code"),
                message=failure.get("Message"),
            )
