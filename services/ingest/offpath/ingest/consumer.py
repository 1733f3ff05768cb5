"""The SQS consumer: long-polls the queue, writes events, then acknowledges.

A message is deleted only after all of its events are durably written (at
least once in; the store's key makes the effect exactly once). A message
that can never be processed (wrong schema, not base64, not an
AnalyticsBatch) is sent to the dead-letter queue with the reason in the
``offpath-dlq-reason`` attribute and deleted at once, so it does not wait
out three receives or hold up its FIFO group. Invalid events inside a good
batch are split off into their own dead-lettered batch; the rest are written.

``pollers`` threads (boto3 is synchronous) each long-poll and process on
their own; SQS keeps FIFO order per message group, since it hands out none
of a group's messages while another of the group is in flight. Every
receive asks for :data:`VISIBILITY_S` of invisibility, and a
:class:`VisibilityKeeper` thread extends it for messages still being
processed after half of that, so a slow DynamoDB never lets another poller
receive a message a first one is still writing.

When writing fails, nothing of the good messages is deleted: they are put
back with a backoff delay as their visibility (``ChangeMessageVisibility``),
and the poller waits before its next receive, so an unavailable or
throttling DynamoDB is retried less and less often instead of in a tight
receive-fail loop. Each receive still counts towards the queue's
``maxReceiveCount``, after which SQS moves the message to the DLQ.
A ``DeleteMessageBatch`` entry that fails on SQS's side is retried; one
whose receipt handle is no longer valid is counted and left: SQS redelivers
it and its events overwrite themselves.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, Protocol, Unpack

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from offpath.ingest.store import WriteError
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
        ChangeMessageVisibilityBatchRequestTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        DeleteMessageBatchRequestTypeDef,
        DeleteMessageBatchResultTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
        SendMessageRequestTypeDef,
        SendMessageResultTypeDef,
    )

log = structlog.get_logger("offpath.ingest.consumer")

_MAX_MESSAGES = 10
# Asked for on every receive, whatever the queue's default, so the keeper
# knows when a message would reappear. It is also how long a message a
# killed consumer held stays hidden.
VISIBILITY_S: Final = 30
# A message still in hand after this share of its visibility gets the whole
# timeout again: half leaves a slow extension call plenty of room.
_EXTEND_AFTER: Final = 0.5
# An extension that failed is tried again this soon (the message still has
# about half its visibility left).
_EXTEND_RETRY_S: Final = 2.0
# After a failed poll: up to 1 s, doubling to 20 s. After a failed queue
# look-up (the endpoint not up yet): up to 0.5 s, doubling to 30 s.
_POLL_BACKOFF = (1.0, 20.0)
_LOOKUP_BACKOFF = (0.5, 30.0)
# After a failed write the messages stay hidden for 10-20 s, then 20-40 s,
# ... up to 7.5-15 min (the attempt is the message's receive count or the
# poller's run of failures, whichever is higher); the poller itself waits
# 0.5-1 s, then 1-2 s, ... up to 30-60 s before its next receive. Half the
# ceiling is always waited, so a failing store is never retried at once.
_STORE_MESSAGE_BACKOFF = (20.0, 900.0)
_STORE_POLLER_BACKOFF = (1.0, 60.0)
# DeleteMessageBatch entries that failed on SQS's side: 3 attempts in all,
# the retries after up to 0.2 s, then 0.4 s.
_DELETE_ATTEMPTS = 3
_DELETE_BACKOFF = (0.2, 2.0)
# Ingest lag (occurred -> written) histogram bounds, in seconds: the
# emitter's linger (1 s) and the freshness goal (p99 <= 2 s) sit in the
# fine part; a backlog or an outage shows in the coarse tail.
LAG_BUCKETS_S: Final = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
)
_NS_PER_S = 1_000_000_000


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

    def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef: ...


class EventWriter(Protocol):
    """Where the consumer writes events (:class:`offpath.ingest.store.EventStore`):
    returns how many were written, raises :class:`WriteError` when not all were."""

    def write(
        self,
        batches: Iterable[tuple[str, Sequence[analytics_pb2.AnalyticsEvent]]],
        *,
        ingested_ns: int,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class Queues:
    """Where the consumer reads and where it dead-letters: names, and URLs
    when configured (``OFFPATH_SQS_QUEUE_URL`` / ``OFFPATH_SQS_DLQ_URL``)."""

    names: QueueNames
    queue_url: str | None = None
    dlq_url: str | None = None


@dataclass(slots=True)
class ConsumerStats:
    """Counters, each written by one thread (a poller, or the keeper) and
    read at scrape time; :meth:`Consumer.stats` adds them up."""

    received: int = 0
    deleted: int = 0
    events_written: int = 0
    dead_lettered: int = 0
    invalid_events: int = 0
    write_failures: int = 0
    poll_errors: int = 0
    # DeleteMessageBatch entries sent again after failing on SQS's side.
    delete_retries: int = 0
    # Messages not deleted although handled (receipt handle expired, or
    # retries spent): SQS redelivers them; their writes are idempotent.
    undeleted: int = 0
    # Messages whose visibility was extended while they were processed.
    visibility_extended: int = 0
    # Messages put back with a backoff delay after a failed write.
    store_backoffs: int = 0
    # Messages received after shutdown began, made visible again at once.
    handed_back: int = 0

    @classmethod
    def total(cls, parts: Iterable[ConsumerStats]) -> ConsumerStats:
        total = cls()
        for part in parts:
            for f in fields(cls):
                setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
        return total


@dataclass(slots=True)
class LagHistogram:
    """Seconds from an event's ``occurred_at`` to its write, by
    :data:`LAG_BUCKETS_S` (per-bucket counts, the last one above every
    bound). One writer (its poller); read at scrape time."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        # A producer's clock ahead of ours is not negative lag.
        seconds = max(seconds, 0.0)
        self.counts[bisect.bisect_left(LAG_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    @classmethod
    def total(cls, parts: Iterable[LagHistogram]) -> LagHistogram:
        total = cls()
        for part in parts:
            counts = list(part.counts)  # one read of a list its poller may be bumping
            total.counts = [a + b for a, b in zip(total.counts, counts, strict=True)]
            total.sum_s += part.sum_s
        return total


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


# Shared with offpath.ingest.lambda_handler: a message is taken apart and its
# invalid events dead-lettered the same way whoever received it.


def split_events(
    batch: analytics_pb2.AnalyticsBatch,
) -> tuple[list[analytics_pb2.AnalyticsEvent], list[tuple[analytics_pb2.AnalyticsEvent, str]]]:
    """A decoded batch's events: those the store takes, and those it never
    can, each with why (:func:`event_problem`)."""
    valid: list[analytics_pb2.AnalyticsEvent] = []
    invalid: list[tuple[analytics_pb2.AnalyticsEvent, str]] = []
    for event in batch.events:
        problem = event_problem(event)
        if problem is None:
            valid.append(event)
        else:
            invalid.append((event, problem))
    return valid, invalid


def invalid_events_letter(
    dlq_url: str,
    message_id: str,
    batch: analytics_pb2.AnalyticsBatch,
    invalid: Sequence[tuple[analytics_pb2.AnalyticsEvent, str]],
) -> tuple[dict[str, Any], str]:
    """The ``SendMessage`` request that dead-letters the invalid events of
    SQS message ``message_id`` as a batch of their own, and its reason."""
    letter = analytics_pb2.AnalyticsBatch(
        batch_id=new_id(),
        producer_id=batch.producer_id,
        events=[event for event, _ in invalid],
    )
    letter.created_at.GetCurrentTime()
    reason = "invalid events: " + "; ".join(problem for _, problem in invalid)
    request = dead_letter_message(
        dlq_url,
        body=encode_batch(letter),
        attributes=MESSAGE_ATTRIBUTES,
        reason=reason,
        # Stable across redeliveries, so a FIFO DLQ keeps one copy.
        source_id=f"{message_id}-invalid",
    )
    return request, reason


def _equal_jitter(backoff: Backoff, attempt: int) -> float:
    """Half the attempt's ceiling plus a random half: spread out, never short."""
    return backoff.ceiling(attempt) / 2 + backoff.delay(attempt) / 2


def _receive_count(message: Mapping[str, Any]) -> int:
    try:
        return int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
    except ValueError:
        return 1


def _chunks(items: Sequence[Any], size: int = _MAX_MESSAGES) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- visibility ----------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Lease:
    queue_url: str
    handles: tuple[str, ...]
    due: float  # monotonic time of the next extension
    extending: bool = False


class VisibilityKeeper:
    """Keeps the messages pollers are processing invisible.

    Pollers hand it plain receipt handles (:meth:`holding`); its own thread
    (:meth:`run`) alone calls ``ChangeMessageVisibilityBatch`` for those
    held past ``extend_after`` of ``visibility_s``, setting the whole
    timeout again, and repeats every ``extend_after`` until they are
    released. Releasing waits for an extension of the same messages in
    flight, so none lands after the poller deleted them or set their
    backoff delay.
    """

    def __init__(
        self,
        sqs: SqsConsumeClient,
        *,
        visibility_s: int = VISIBILITY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sqs = sqs
        self._visibility_s = visibility_s
        self._interval_s = visibility_s * _EXTEND_AFTER
        self._clock = clock
        self._cond = threading.Condition()
        self._leases: list[_Lease] = []
        self._stopped = False
        self.stats = ConsumerStats()

    @contextlib.contextmanager
    def holding(self, queue_url: str, handles: Sequence[str]) -> Iterator[None]:
        """Keep ``handles`` invisible for the duration of the block."""
        lease = _Lease(queue_url, tuple(handles), self._clock() + self._interval_s)
        with self._cond:
            self._leases.append(lease)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._leases.remove(lease)
                self._cond.wait_for(lambda: not lease.extending)

    def stop(self) -> None:
        """End :meth:`run`; safe to call twice."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run(self) -> None:
        """Extend what is due until :meth:`stop`."""
        while True:
            with self._cond:
                due = self._wait_for_due()
                if due is None:
                    return
                for lease in due:
                    lease.extending = True
            try:
                for lease in due:
                    ok = self._extend(lease)
                    lease.due = self._clock() + (self._interval_s if ok else _EXTEND_RETRY_S)
            finally:
                with self._cond:
                    for lease in due:
                        lease.extending = False
                    self._cond.notify_all()

    def _wait_for_due(self) -> list[_Lease] | None:
        """Under the lock: the leases due now, after waiting for one; None once stopped."""
        while not self._stopped:
            now = self._clock()
            due = [lease for lease in self._leases if lease.due <= now]
            if due:
                return due
            soonest = min((lease.due for lease in self._leases), default=None)
            self._cond.wait(None if soonest is None else soonest - now)
        return None

    def _extend(self, lease: _Lease) -> bool:
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": self._visibility_s}
            for i, handle in enumerate(lease.handles)
        ]
        try:
            response = self._sqs.change_message_visibility_batch(
                QueueUrl=lease.queue_url, Entries=entries
            )
        except (BotoCoreError, ClientError) as exc:
            log.error("visibility_extend_failed", messages=len(entries), error=str(exc))
            return False
        failed = response.get("Failed", [])
        self.stats.visibility_extended += len(entries) - len(failed)
        if failed:
            log.warning(
                "visibility_extend_refused",
                messages=len(failed),
                code=failed[0].get("Code"),
                detail="those messages may be received again; their writes are idempotent",
            )
        log.info("visibility_extended", messages=len(entries) - len(failed), s=self._visibility_s)
        return True


# -- the consumer ----------------------------------------------------------------------


class Consumer:
    """Moves batches from the queue into the store with ``pollers`` threads.

    :meth:`run` is the service's loop; :meth:`poll_once` and :meth:`process`
    run one poller's step on the calling thread (tests, tools)."""

    def __init__(
        self,
        sqs: SqsConsumeClient,
        store: EventWriter,
        queues: Queues,
        *,
        wait_seconds: int = 20,
        pollers: int = 1,
        visibility_s: int = VISIBILITY_S,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if pollers < 1:
            raise ValueError(f"pollers is {pollers}; at least 1")
        self.sqs = sqs
        self.store = store
        self._queues = queues
        self._queue_url = queues.queue_url
        self._dlq_url = queues.dlq_url
        self.wait_seconds = wait_seconds
        self.visibility_s = visibility_s
        self.clock_ns = clock_ns
        self.rng = rng
        self.sleep = sleep
        self._lookup_backoff = Backoff(*_LOOKUP_BACKOFF, rng)
        self.keeper = VisibilityKeeper(sqs, visibility_s=visibility_s)
        self._busy: set[int] = set()
        self._busy_cond = threading.Condition()
        self._pollers = [_Poller(self, index) for index in range(pollers)]

    @property
    def stats(self) -> ConsumerStats:
        """Every poller's counters and the keeper's, added up now."""
        return ConsumerStats.total([*(poller.stats for poller in self._pollers), self.keeper.stats])

    @property
    def lag(self) -> LagHistogram:
        """Every poller's ingest-lag observations, added up now."""
        return LagHistogram.total(poller.lag for poller in self._pollers)

    def run(self, stop: threading.Event) -> None:
        """Look the queues up, then poll with every poller until ``stop`` is
        set; errors back off, they never end the loop. Returns when each
        poller has finished the messages in hand (one still in a long poll
        is left to it: it hands back what that poll brings)."""
        if not self.resolve(stop):
            return
        log.info(
            "consumer_started",
            queue_url=self._queue_url,
            wait_s=self.wait_seconds,
            pollers=len(self._pollers),
            visibility_s=self.visibility_s,
        )
        # Daemon threads: a long poll in flight must not hold the process
        # past its shutdown deadline (what it brings reappears).
        keeper = threading.Thread(
            target=self.keeper.run, name="offpath-ingest-visibility", daemon=True
        )
        keeper.start()
        others = [
            threading.Thread(
                target=poller.run, args=(stop,), name=f"offpath-ingest-poller-{poller.index}"
            )
            for poller in self._pollers[1:]
        ]
        for thread in others:
            thread.daemon = True
            thread.start()
        self._pollers[0].run(stop)
        self.drain(None)
        self.keeper.stop()
        keeper.join()
        log.info("consumer_stopped")

    def drain(self, timeout: float | None) -> bool:
        """After ``stop`` is set: wait until no poller is processing messages
        (pollers still in a long poll do not count); False on timeout."""
        with self._busy_cond:
            return self._busy_cond.wait_for(lambda: not self._busy, timeout)

    @contextlib.contextmanager
    def processing(self, index: int) -> Iterator[None]:
        """Poller ``index`` holds messages for the block (what :meth:`drain` waits for)."""
        with self._busy_cond:
            self._busy.add(index)
        try:
            yield
        finally:
            with self._busy_cond:
                self._busy.discard(index)
                self._busy_cond.notify_all()

    def resolve(self, stop: threading.Event) -> bool:
        """Find both queues' URLs, retrying until found or ``stop`` is set
        (the endpoint may start after us). False when stopped first."""
        attempt = 0
        while not stop.is_set():
            try:
                self._queue_url = queue_url(
                    self.sqs, self._queues.names.queue, self._queues.queue_url
                )
                self._dlq_url = queue_url(self.sqs, self._queues.names.dlq, self._queues.dlq_url)
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

    def urls(self) -> tuple[str, str]:
        """The queue's and the DLQ's URLs, once :meth:`resolve` found them."""
        if self._queue_url is None or self._dlq_url is None:
            raise RuntimeError("queues not resolved: call resolve() (run() does) first")
        return self._queue_url, self._dlq_url

    def poll_once(self) -> int:
        """The first poller's receive and its processing, on this thread;
        returns how many messages came."""
        return self._pollers[0].poll_once()

    def process(self, messages: Sequence[dict[str, Any]]) -> None:
        """The first poller's processing of ``messages``, on this thread."""
        self._pollers[0].process(messages)


class _Poller:
    """One poller: receives, writes, deletes. Its methods run on its own
    thread only, and its counters and lag histogram are its own."""

    def __init__(self, consumer: Consumer, index: int) -> None:
        self._c = consumer
        self.index = index
        self.stats = ConsumerStats()
        self.lag = LagHistogram()
        self._poll_backoff = Backoff(*_POLL_BACKOFF, consumer.rng)
        self._message_backoff = Backoff(*_STORE_MESSAGE_BACKOFF, consumer.rng)
        self._store_backoff = Backoff(*_STORE_POLLER_BACKOFF, consumer.rng)
        self._delete_backoff = Backoff(*_DELETE_BACKOFF, consumer.rng)
        # The current run of failed writes (0: the store answers).
        self._write_failures = 0
        self._failing_since = 0.0

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                self.poll_once(stop)
                failures = 0
            except Exception as exc:
                failures += 1
                self.stats.poll_errors += 1
                delay = self._poll_backoff.delay(failures)
                log.error(
                    "consumer_poll_failed",
                    poller=self.index,
                    error=f"{type(exc).__name__}: {exc}",
                    failures=failures,
                    retry_in_s=round(delay, 2),
                )
                stop.wait(delay)
                continue
            if self._write_failures:
                stop.wait(_equal_jitter(self._store_backoff, self._write_failures))

    def poll_once(self, stop: threading.Event | None = None) -> int:
        queue, _ = self._c.urls()
        response = self._c.sqs.receive_message(
            QueueUrl=queue,
            MaxNumberOfMessages=_MAX_MESSAGES,
            WaitTimeSeconds=self._c.wait_seconds,
            VisibilityTimeout=self._c.visibility_s,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
        )
        messages: list[Any] = list(response.get("Messages", []))
        if messages:
            # Busy before looking at stop: shutdown either sees this poller
            # busy and waits, or this poller sees stop and hands back.
            with self._c.processing(self.index):
                if stop is not None and stop.is_set():
                    self._hand_back(messages)
                else:
                    self.process(messages)
        return len(messages)

    def process(self, messages: Sequence[dict[str, Any]]) -> None:
        """Write what can be written, dead-letter what never can, delete each
        message once it is fully handled, and put back with a delay what
        could not be written."""
        self.stats.received += len(messages)
        queue, _ = self._c.urls()
        with self._c.keeper.holding(queue, [m["ReceiptHandle"] for m in messages]):
            handled, unwritten = self._handle(messages)
        self._delete(handled)
        if unwritten:
            self._back_off(unwritten)

    def _handle(
        self, messages: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Decode, dead-letter and write; returns the messages to delete and
        those whose events could not be written."""
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
            decoded.append(_Decoded(message, batch, *split_events(batch)))

        events = sum(len(d.valid) for d in decoded)
        ingested_ns = self._c.clock_ns()
        try:
            written = (
                self._c.store.write(
                    ((d.batch.batch_id, d.valid) for d in decoded), ingested_ns=ingested_ns
                )
                if events
                else 0
            )
        except WriteError as exc:
            self._write_failed(exc, messages=len(decoded), events=events)
            return handled, [d.message for d in decoded]
        self._write_succeeded()
        self.stats.events_written += written
        for d in decoded:
            for event in d.valid:
                self.lag.observe((ingested_ns - event.occurred_at.ToNanoseconds()) / _NS_PER_S)
            if d.invalid and not self._dead_letter_events(d):
                continue  # not deleted: comes back, and its events overwrite
            handled.append(d.message)
        if written:
            log.info("events_ingested", events=written, messages=len(decoded), poller=self.index)
        return handled, []

    # -- a failing store ---------------------------------------------------------------

    def _write_failed(self, exc: WriteError, *, messages: int, events: int) -> None:
        self.stats.write_failures += 1
        self._write_failures += 1
        if self._write_failures == 1:
            # One line per run of failures, not one per batch.
            self._failing_since = time.monotonic()
            log.error(
                "store_write_failing",
                poller=self.index,
                error=str(exc),
                messages=messages,
                events=events,
                detail="messages go back with growing delays until a write succeeds",
            )

    def _write_succeeded(self) -> None:
        if self._write_failures:
            log.info(
                "store_write_recovered",
                poller=self.index,
                failed_writes=self._write_failures,
                failing_s=round(time.monotonic() - self._failing_since, 1),
            )
        self._write_failures = 0

    def _back_off(self, messages: Sequence[dict[str, Any]]) -> None:
        """Hide messages whose write failed for a growing, jittered delay."""
        attempt = max(self._write_failures, *(_receive_count(m) for m in messages))
        delay = round(_equal_jitter(self._message_backoff, attempt))
        if self._set_visibility(messages, delay, "store_backoff"):
            self.stats.store_backoffs += len(messages)

    def _hand_back(self, messages: Sequence[dict[str, Any]]) -> None:
        """Shutting down: make messages just received visible again at once."""
        if self._set_visibility(messages, 0, "hand_back"):
            self.stats.handed_back += len(messages)
        log.info("messages_handed_back", messages=len(messages), poller=self.index)

    def _set_visibility(self, messages: Sequence[dict[str, Any]], seconds: int, why: str) -> bool:
        """Set the messages' visibility; False when SQS refused the call (the
        messages then reappear when their current visibility ends)."""
        queue, _ = self._c.urls()
        for chunk in _chunks(messages):
            entries: list[Any] = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": seconds}
                for i, m in enumerate(chunk)
            ]
            try:
                response = self._c.sqs.change_message_visibility_batch(
                    QueueUrl=queue, Entries=entries
                )
            except (BotoCoreError, ClientError) as exc:
                log.error("visibility_change_failed", why=why, messages=len(chunk), error=str(exc))
                return False
            failed = response.get("Failed", [])
            if failed:
                log.warning(
                    "visibility_change_refused",
                    why=why,
                    messages=len(failed),
                    code=failed[0].get("Code"),
                )
        return True

    # -- dead letters --------------------------------------------------------

    def _dead_letter_message(self, message: dict[str, Any], reason: str) -> bool:
        _, dlq = self._c.urls()
        request = dead_letter_message(
            dlq,
            body=message.get("Body", ""),
            attributes=message.get("MessageAttributes", {}),
            reason=reason,
            source_id=message["MessageId"],
        )
        ok = self._send_dead_letter(request, message["MessageId"])
        if ok:
            log.warning("message_dead_lettered", message_id=message["MessageId"], reason=reason)
        return ok

    def _dead_letter_events(self, decoded: _Decoded) -> bool:
        _, dlq = self._c.urls()
        message_id = decoded.message["MessageId"]
        request, reason = invalid_events_letter(dlq, message_id, decoded.batch, decoded.invalid)
        ok = self._send_dead_letter(request, f"{message_id}-invalid")
        if ok:
            self.stats.invalid_events += len(decoded.invalid)
            log.warning(
                "events_dead_lettered",
                message_id=message_id,
                events=len(decoded.invalid),
                reason=reason[:MAX_REASON_CHARS],
            )
        return ok

    def _send_dead_letter(self, request: dict[str, Any], source_id: str) -> bool:
        try:
            self._c.sqs.send_message(**request)
        except (BotoCoreError, ClientError) as exc:
            # Left on the queue; SQS's redrive policy is the backstop.
            log.error("dead_letter_failed", source_id=source_id, error=str(exc))
            return False
        self.stats.dead_lettered += 1
        return True

    # -- acknowledging -------------------------------------------------------

    def _delete(self, messages: Sequence[dict[str, Any]]) -> None:
        """Delete handled messages, retrying entries that failed on SQS's
        side; a message left undeleted is redelivered and overwrites itself."""
        if not messages:
            return
        queue, _ = self._c.urls()
        pending = list(messages)
        for attempt in range(1, _DELETE_ATTEMPTS + 1):
            entries: list[Any] = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(pending)
            ]
            retry: list[dict[str, Any]] = []
            try:
                response = self._c.sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                error = str(exc)
                retry = pending
            else:
                failed = response.get("Failed", [])
                self.stats.deleted += len(pending) - len(failed)
                expired = [f for f in failed if f.get("SenderFault", False)]
                retry = [pending[int(f["Id"])] for f in failed if not f.get("SenderFault", False)]
                if expired:
                    # The receipt handle is no longer valid (the visibility
                    # ended): SQS redelivers it, its writes are idempotent.
                    self.stats.undeleted += len(expired)
                    log.warning(
                        "delete_refused",
                        messages=len(expired),
                        code=expired[0].get("Code"),
                        detail="redelivered later; writing again is harmless",
                    )
                error = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
            if not retry:
                return
            if attempt == _DELETE_ATTEMPTS:
                self.stats.undeleted += len(retry)
                log.error(
                    "delete_failed",
                    messages=len(retry),
                    attempts=attempt,
                    error=error,
                    detail="redelivered later; writing again is harmless",
                )
                return
            self.stats.delete_retries += len(retry)
            self._c.sleep(self._delete_backoff.delay(attempt))
            pending = retry
