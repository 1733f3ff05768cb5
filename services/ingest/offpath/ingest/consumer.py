"""The SQS consumer: long-polls the queue, writes events, then acknowledges.

A message is deleted only after all of its events are durably written (at
least once in; the store's key makes the effect exactly once). What can
never be stored goes to the dead-letter queue with the reason in the
``offpath-dlq-reason`` attribute, on its first receive, and never holds up
the other messages of the receive:

- a message :func:`offpath.ingest.decode.decode` calls poison (not ours,
  not a batch, another message type, no events, no storable event) is
  dead-lettered as it came and deleted at once;
- the invalid events of a good batch (out-of-range times, bad ids,
  oversize, ...) are split off into a dead-lettered batch of their own once
  the valid ones are written;
- a message the store refuses for good (DynamoDB's ``ValidationException``,
  a ``ValueError`` or ``OverflowError`` from converting its events: retrying
  can never succeed) is dead-lettered whole with the store's reason. When
  messages written together fail that way, each is written again alone, so
  only the one the store refuses is dead-lettered and the others land;
- a message received more than :data:`MAX_RECEIVES` times (the queue's
  ``maxReceiveCount``, which SQS applies itself; this backstop is for an
  endpoint that does not, such as moto) is dead-lettered with "received N
  times" instead of being tried again.

Every dead letter is logged once (``message_dead_lettered`` or
``events_dead_lettered``: message id, reason, event ids; never query text).

``pollers`` threads (boto3 is synchronous) each long-poll and process on
their own; SQS keeps FIFO order per message group, since it hands out none
of a group's messages while another of the group is in flight. Every
receive asks for :data:`VISIBILITY_S` of invisibility, and a
:class:`VisibilityKeeper` thread extends it for messages still being
processed after half of that, so a slow DynamoDB never lets another poller
receive a message a first one is still writing.

When the store is unavailable (throttling past botocore's retries, 5xx,
no connection, a missing table or permission: nothing about the message),
nothing of the good messages is deleted or dead-lettered: they are put
back with a backoff delay as their visibility (``ChangeMessageVisibility``),
and the poller waits before its next receive, so an unavailable or
throttling DynamoDB is retried less and less often instead of in a tight
receive-fail loop. Each receive still counts towards the queue's
``maxReceiveCount``, after which SQS moves the message to the DLQ. Any
other error writing one message (a bug) backs that message off the same way
without holding up the others.
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
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Unpack

import structlog
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from offpath.ingest.decode import Decoded, Poison, decode, problems
from offpath.ingest.store import WriteError
from offpath.kit.backoff import Backoff
from offpath.kit.ids import new_id
from offpath.kit.sqs import (
    MAX_REASON_CHARS,
    MESSAGE_ATTRIBUTES,
    QueueNames,
    QueueUrlClient,
    SqsSendClient,
    dead_letter_message,
    encode_batch,
    queue_url,
    send_dead_letter,
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


class SqsConsumeClient(QueueUrlClient, SqsSendClient, Protocol):
    """The SQS calls the consumer makes (boto3's SQS client has them)."""

    def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef: ...

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


# Why messages and events go to the DLQ (offpath_ingest_dead_letters{kind}):
# decode's poison kinds, split-off invalid events, a store refusal, the
# receive-count backstop.
DEAD_LETTER_KINDS: Final = (
    "schema",
    "undecodable",
    "foreign",
    "empty",
    "no_valid_events",
    "invalid_events",
    "store_refused",
    "receive_limit",
)


def _no_dead_letters() -> dict[str, int]:
    # Every kind from the start: the dict never changes size, so a scrape can
    # read it while its poller counts.
    return dict.fromkeys(DEAD_LETTER_KINDS, 0)


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
    # Dead letters sent (messages, or letters of invalid events) by kind.
    dead_letter_kinds: dict[str, int] = field(default_factory=_no_dead_letters)

    def count_dead_letter(self, kind: str) -> None:
        if kind in self.dead_letter_kinds:
            self.dead_letter_kinds[kind] += 1

    @classmethod
    def total(cls, parts: Iterable[ConsumerStats]) -> ConsumerStats:
        total = cls()
        for part in parts:
            for f in fields(cls):
                mine, theirs = getattr(total, f.name), getattr(part, f.name)
                if isinstance(mine, dict):
                    for key, value in list(theirs.items()):
                        mine[key] = mine.get(key, 0) + value
                else:
                    setattr(total, f.name, mine + theirs)
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


# The queue's maxReceiveCount (offpath.dev.bootstrap and deploy/aws set 3):
# SQS moves a message to the DLQ instead of a fourth receive. The consumer
# dead-letters one received more often itself, for endpoints that do not
# apply the redrive policy (moto).
MAX_RECEIVES: Final = 3
# Event ids named in a dead letter's log line (then a count).
_LOGGED_EVENT_IDS: Final = 20
# DynamoDB error codes that say the request itself is wrong: writing the same
# message again fails the same way. Cancellation reasons of a transaction too.
_REFUSED_CODES: Final = frozenset({"ValidationException", "SerializationException"})
_REFUSED_CANCELLATIONS: Final = frozenset({"ValidationError"})
# Errors of our own conversion of an event (times, numbers): deterministic.
_REFUSED_ERRORS: Final = (ValueError, OverflowError)


@dataclass(frozen=True, slots=True)
class StoreFailure:
    """What a failed write says about its message.

    - ``refused``: the message can never be written (DynamoDB refused the
      request as invalid, or converting its events raised): dead-letter it.
    - ``unavailable``: the store is (throttled, 5xx, unreachable, missing,
      forbidden): nothing about the message; retry later, dead-letter nothing.
    - ``error``: anything else (a bug): retry later, and let SQS's redrive
      policy be the backstop.
    """

    kind: Literal["refused", "unavailable", "error"]
    detail: str


def store_failure(exc: BaseException) -> StoreFailure:
    """Classify an exception raised by :meth:`EventWriter.write` (the
    :class:`WriteError` and whatever it was raised from)."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        if isinstance(error, ClientError):
            body: Any = error.response
            code = str(body.get("Error", {}).get("Code", ""))
            message = str(body.get("Error", {}).get("Message", ""))[:300]
            reasons = {str(r.get("Code")) for r in body.get("CancellationReasons", []) or []}
            if code in _REFUSED_CODES or reasons & _REFUSED_CANCELLATIONS:
                return StoreFailure("refused", f"DynamoDB {code}: {message}")
            return StoreFailure("unavailable", f"DynamoDB {code}: {message}")
        if isinstance(error, ParamValidationError):
            # botocore refused to build the request from this message's items.
            return StoreFailure("refused", f"{type(error).__name__}: {str(error)[:300]}")
        if isinstance(error, BotoCoreError):
            return StoreFailure("unavailable", f"{type(error).__name__}: {error}")
    for error in chain:
        if isinstance(error, _REFUSED_ERRORS):
            return StoreFailure("refused", f"{type(error).__name__}: {str(error)[:300]}")
    if type(exc) is WriteError and exc.__cause__ is None:
        # The store's own give-up (transaction conflicts past its retries).
        return StoreFailure("unavailable", str(exc)[:300])
    return StoreFailure("error", f"{type(exc).__name__}: {str(exc)[:300]}")


def receive_limit_reason(receive_count: int, limit: int = MAX_RECEIVES) -> str | None:
    """Why a message received ``receive_count`` times is dead-lettered
    without another try, or None while under the queue's maxReceiveCount."""
    if receive_count <= limit:
        return None
    return (
        f"received {receive_count} times, more than the queue's maxReceiveCount ({limit}); "
        "not tried again"
    )


def event_ids(events: Iterable[analytics_pb2.AnalyticsEvent]) -> list[str]:
    """Event ids for a dead letter's log line: the first few, then a count."""
    ids = [event.event_id[:64] for event in events]
    if len(ids) > _LOGGED_EVENT_IDS:
        return [*ids[:_LOGGED_EVENT_IDS], f"(+{len(ids) - _LOGGED_EVENT_IDS} more)"]
    return ids


# Shared with offpath.ingest.lambda_handler: a message's invalid events are
# dead-lettered the same way whoever received it.


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
    reason = "invalid events: " + problems(invalid)
    request = dead_letter_message(
        dlq_url,
        body=encode_batch(letter),
        attributes=MESSAGE_ATTRIBUTES,
        reason=reason,
        # Stable across redeliveries, so a FIFO DLQ keeps one copy.
        source_id=f"{message_id}-invalid",
    )
    return request, reason


def dead_letter_invalid_events(
    sqs: SqsSendClient,
    dlq_url: str,
    message_id: str,
    batch: analytics_pb2.AnalyticsBatch,
    invalid: Sequence[tuple[analytics_pb2.AnalyticsEvent, str]],
    **fields: object,
) -> bool:
    """Dead-letter the invalid events of SQS message ``message_id``
    (:func:`invalid_events_letter`), with one warning line (``fields`` added
    to it); whether SQS took them."""
    request, reason = invalid_events_letter(dlq_url, message_id, batch, invalid)
    if not send_dead_letter(sqs, request, f"{message_id}-invalid"):
        return False
    log.warning(
        "events_dead_lettered",
        message_id=message_id,
        kind="invalid_events",
        events=len(invalid),
        reason=reason[:MAX_REASON_CHARS],
        event_ids=event_ids(event for event, _ in invalid),
        **fields,
    )
    return True


@dataclass(slots=True)
class _Pending:
    """A received message with storable events, on its way to the store."""

    message: dict[str, Any]
    decoded: Decoded

    @property
    def batch_id(self) -> str:
        return self.decoded.batch.batch_id

    @property
    def valid(self) -> list[analytics_pb2.AnalyticsEvent]:
        return self.decoded.valid


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
        max_receives: int = MAX_RECEIVES,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if pollers < 1:
            raise ValueError(f"pollers is {pollers}; at least 1")
        if max_receives < 1:
            raise ValueError(f"max_receives is {max_receives}; at least 1")
        self.sqs = sqs
        self.store = store
        self._queues = queues
        self._queue_url = queues.queue_url
        self._dlq_url = queues.dlq_url
        self.wait_seconds = wait_seconds
        self.visibility_s = visibility_s
        self.max_receives = max_receives
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
        pending: list[_Pending] = []
        handled: list[dict[str, Any]] = []
        for message in messages:
            verdict = decode(message.get("Body", ""), message.get("MessageAttributes", {}))
            if isinstance(verdict, Poison):
                if self._dead_letter_message(
                    message, verdict.reason, kind=verdict.kind, event_ids=list(verdict.event_ids)
                ):
                    handled.append(message)
                continue
            over = receive_limit_reason(_receive_count(message), self._c.max_receives)
            if over is not None:
                events = [*verdict.valid, *(event for event, _ in verdict.invalid)]
                if self._dead_letter_message(
                    message, over, kind="receive_limit", event_ids=event_ids(events)
                ):
                    handled.append(message)
                continue
            pending.append(_Pending(message, verdict))
        if not pending:
            return handled, []

        ingested_ns = self._c.clock_ns()
        written, refused, failed = self._write(pending, ingested_ns)
        for p, failure in refused:
            if self._dead_letter_message(
                p.message,
                f"the store refused the batch: {failure.detail}",
                kind="store_refused",
                event_ids=event_ids(p.valid),
            ):
                handled.append(p.message)
        for p in written:
            for event in p.valid:
                self.lag.observe((ingested_ns - event.occurred_at.ToNanoseconds()) / _NS_PER_S)
            if p.decoded.invalid and not self._dead_letter_events(p):
                continue  # not deleted: comes back, and its events overwrite
            handled.append(p.message)
        return handled, [p.message for p, _ in failed]

    def _write(
        self, pending: Sequence[_Pending], ingested_ns: int
    ) -> tuple[
        list[_Pending], list[tuple[_Pending, StoreFailure]], list[tuple[_Pending, StoreFailure]]
    ]:
        """Write every pending message's valid events: in one store call, and
        when that fails for anything but an unavailable store, again one
        message at a time, so one message the store cannot take holds up no
        other. Returns the messages written, those refused for good, and
        those that failed (to be put back)."""
        try:
            count = self._c.store.write(
                ((p.batch_id, p.valid) for p in pending), ingested_ns=ingested_ns
            )
        except Exception as exc:
            failure = store_failure(exc)
            if failure.kind == "unavailable" or len(pending) == 1:
                outcomes = [(p, failure) for p in pending]
                if failure.kind == "refused":
                    return [], outcomes, []
                self._after_write([], outcomes, count=0)
                return [], [], outcomes
        else:
            self._after_write(list(pending), [], count=count)
            return list(pending), [], []
        written: list[_Pending] = []
        refused: list[tuple[_Pending, StoreFailure]] = []
        failed: list[tuple[_Pending, StoreFailure]] = []
        count = 0
        for p in pending:
            try:
                count += self._c.store.write([(p.batch_id, p.valid)], ingested_ns=ingested_ns)
            except Exception as exc:
                failure = store_failure(exc)
                (refused if failure.kind == "refused" else failed).append((p, failure))
            else:
                written.append(p)
        self._after_write(written, failed, count=count)
        return written, refused, failed

    def _after_write(
        self,
        written: Sequence[_Pending],
        failed: Sequence[tuple[_Pending, StoreFailure]],
        *,
        count: int,
    ) -> None:
        """Counters and logs of a write: a run of failures starts when nothing
        of a receive was written and something failed, and ends with the next
        write that lands."""
        self.stats.events_written += count
        if count:
            log.info("events_ingested", events=count, messages=len(written), poller=self.index)
        for p, failure in failed:
            if failure.kind == "error":
                log.error(
                    "store_write_error",
                    poller=self.index,
                    message_id=p.message.get("MessageId"),
                    events=len(p.valid),
                    error=failure.detail,
                    detail="put back with a delay; SQS's redrive policy is the backstop",
                )
        if failed and not written:
            self._write_failed(
                failed[0][1].detail,
                messages=len(failed),
                events=sum(len(p.valid) for p, _ in failed),
            )
        elif written:
            self._write_succeeded()

    # -- a failing store ---------------------------------------------------------------

    def _write_failed(self, error: str, *, messages: int, events: int) -> None:
        self.stats.write_failures += 1
        self._write_failures += 1
        if self._write_failures == 1:
            # One line per run of failures, not one per batch.
            self._failing_since = time.monotonic()
            log.error(
                "store_write_failing",
                poller=self.index,
                error=error,
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

    def _dead_letter_message(
        self, message: dict[str, Any], reason: str, *, kind: str, event_ids: Sequence[str] = ()
    ) -> bool:
        """Send the message as it came to the DLQ with ``reason``; one log line."""
        _, dlq = self._c.urls()
        message_id = message["MessageId"]
        request = dead_letter_message(
            dlq,
            body=message.get("Body", ""),
            attributes=message.get("MessageAttributes", {}),
            reason=reason,
            source_id=message_id,
        )
        ok = self._send_dead_letter(request, message_id)
        if ok:
            self.stats.count_dead_letter(kind)
            log.warning(
                "message_dead_lettered",
                message_id=message_id,
                kind=kind,
                reason=reason[:MAX_REASON_CHARS],
                event_ids=list(event_ids),
                receive_count=_receive_count(message),
                poller=self.index,
            )
        return ok

    def _dead_letter_events(self, pending: _Pending) -> bool:
        _, dlq = self._c.urls()
        invalid = pending.decoded.invalid
        ok = dead_letter_invalid_events(
            self._c.sqs,
            dlq,
            pending.message["MessageId"],
            pending.decoded.batch,
            invalid,
            poller=self.index,
        )
        if ok:
            self.stats.dead_lettered += 1
            self.stats.invalid_events += len(invalid)
            self.stats.count_dead_letter("invalid_events")
        return ok

    def _send_dead_letter(self, request: dict[str, Any], source_id: str) -> bool:
        ok = send_dead_letter(self._c.sqs, request, source_id)
        if ok:
            self.stats.dead_lettered += 1
        return ok

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
