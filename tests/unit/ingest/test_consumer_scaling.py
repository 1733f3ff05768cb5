"""Unit tests for offpath.ingest.consumer's scale-out behaviour over the shared FakeSqs and
an in-memory event writer: concurrent pollers and their shutdown, DeleteMessageBatch
failures, visibility extension for slow writes, store-failure backoff through
ChangeMessageVisibility, and the ingest-lag histogram."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from offpath.ingest.consumer import LAG_BUCKETS_S, Consumer, Queues
from offpath.ingest.metrics import IngestCollector
from offpath.ingest.store import WriteError
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, QueueNames, encode_batch, fifo_fields
from offpath.testing.calls import client_error
from offpath.testing.sqs import FakeSqs
from offpath.v1 import analytics_pb2

QUEUE = "events.fifo"
DLQ = "events-dlq.fifo"
NOW_NS = 1_790_000_100_000_000_000
_NS = 1_000_000_000
_TIMEOUT_S = 5.0


class MemoryWriter:
    """An EventWriter keeping events by id; ``gate`` (called with the batch's event ids
    before storing) can block or raise to play a slow or failing store."""

    def __init__(self, gate: Callable[[list[str]], object] | None = None) -> None:
        self.events: dict[str, analytics_pb2.AnalyticsEvent] = {}
        self.writes = 0
        self.gate = gate
        self._lock = threading.Lock()

    def write(
        self,
        batches: Iterable[tuple[str, Sequence[analytics_pb2.AnalyticsEvent]]],
        *,
        ingested_ns: int,
    ) -> int:
        events = [event for _, batch in batches for event in batch]
        if self.gate is not None:
            self.gate([event.event_id for event in events])
        with self._lock:
            self.writes += 1
            for event in events:
                self.events[event.event_id] = event
        return len({event.event_id for event in events})


class Harness:
    """FakeSqs with a FIFO queue and its DLQ, a MemoryWriter, and a consumer whose jitter
    always picks the backoff ceiling and whose sleeps are recorded, not spent."""

    def __init__(
        self,
        *,
        pollers: int = 1,
        wait_seconds: int = 0,
        visibility_s: int = 30,
        long_poll: bool = False,
        writer: MemoryWriter | None = None,
    ) -> None:
        self.sqs = FakeSqs(long_poll=long_poll)
        self.queue_url = self.sqs.add_queue(QUEUE, VisibilityTimeout="30", FifoQueue="true")
        self.sqs.add_queue(DLQ, FifoQueue="true")
        self.writer = writer or MemoryWriter()
        self.sleeps: list[float] = []
        self.consumer = Consumer(
            self.sqs,
            self.writer,
            Queues(QueueNames(queue=QUEUE, dlq=DLQ)),
            wait_seconds=wait_seconds,
            pollers=pollers,
            visibility_s=visibility_s,
            clock_ns=lambda: NOW_NS,
            rng=lambda: 1.0,
            sleep=self.sleeps.append,
        )
        self._n = itertools.count()

    def resolve(self) -> None:
        assert self.consumer.resolve(threading.Event())

    def send(self, *events: analytics_pb2.AnalyticsEvent, group: str = "producer-1") -> None:
        n = next(self._n)
        batch = analytics_pb2.AnalyticsBatch(
            batch_id=f"0190a6f2-0000-7000-8000-{n:012d}", producer_id=group, events=events
        )
        self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=encode_batch(batch),
            MessageAttributes=dict(MESSAGE_ATTRIBUTES),
            **fifo_fields(self.queue_url, group_id=group, dedup_id=f"dedup-{n}"),
        )

    @property
    def left(self) -> int:
        """Messages still on the queue (not deleted), in flight or not."""
        return len(self.sqs.bodies(self.queue_url))

    def visibility_changes(self) -> list[list[int]]:
        """The VisibilityTimeout of every entry of each ChangeMessageVisibilityBatch call."""
        return [
            [entry["VisibilityTimeout"] for entry in call["Entries"]]
            for call in self.sqs.journal.of("change_message_visibility_batch")
        ]

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.consumer.run, args=(stop,), daemon=True)
        thread.start()
        return thread


def _event(i: int, occurred_ns: int = NOW_NS - _NS) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=f"0190a6f2-7a55-7cc1-9d2b-{i:012x}",
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        producer_id="producer-1",
    )
    event.occurred_at.FromNanoseconds(occurred_ns)
    return event


def _wait_until(condition: Callable[[], bool], timeout: float = _TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _poller_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("offpath-ingest-poller")]


class TestPollers:
    def test_pollers_write_concurrently(self) -> None:
        """Three pollers hold three messages (three FIFO groups) in the store at once: the
        writes meet at a three-party barrier, which one poller alone could never pass."""
        barrier = threading.Barrier(3, timeout=_TIMEOUT_S)
        writer = MemoryWriter(gate=lambda _ids: barrier.wait())
        harness = Harness(pollers=3, wait_seconds=1, long_poll=True, writer=writer)
        stop = threading.Event()
        thread = harness.start(stop)
        try:
            # Each send is taken by an idle poller, which then waits in the barrier.
            harness.send(_event(0), group="g0")
            assert _wait_until(lambda: barrier.n_waiting == 1)
            harness.send(_event(1), group="g1")
            assert _wait_until(lambda: barrier.n_waiting == 2)
            harness.send(_event(2), group="g2")
            assert _wait_until(lambda: harness.left == 0)
        finally:
            stop.set()
            thread.join(_TIMEOUT_S)
        assert not thread.is_alive()
        assert not barrier.broken
        assert writer.writes == 3
        assert len(writer.events) == 3
        assert harness.consumer.stats.deleted == 3

    def test_all_pollers_stop_on_shutdown(self) -> None:
        """After stop, run() returns and every poller thread ends once its long poll does."""
        harness = Harness(pollers=4, wait_seconds=1, long_poll=True)
        before = set(_poller_threads())
        stop = threading.Event()
        thread = harness.start(stop)
        assert _wait_until(lambda: len(harness.sqs.journal.of("receive_message")) >= 4)
        mine = set(_poller_threads()) - before
        assert len(mine) == 3  # the first poller runs on run()'s thread
        stop.set()
        thread.join(_TIMEOUT_S)
        assert not thread.is_alive()
        assert _wait_until(lambda: not any(t.is_alive() for t in mine))

    def test_drain_waits_for_the_message_in_hand(self) -> None:
        """Shutdown's drain() waits while a poller is writing, and returns once that
        message is written and deleted."""
        release = threading.Event()
        writing = threading.Event()

        def slow(_ids: list[str]) -> None:
            writing.set()
            assert release.wait(_TIMEOUT_S)

        harness = Harness(pollers=2, wait_seconds=1, long_poll=True, writer=MemoryWriter(slow))
        stop = threading.Event()
        thread = harness.start(stop)
        try:
            harness.send(_event(1))
            assert writing.wait(_TIMEOUT_S)
            stop.set()
            assert not harness.consumer.drain(0.2)
            release.set()
            assert harness.consumer.drain(_TIMEOUT_S)
        finally:
            release.set()
            stop.set()
            thread.join(_TIMEOUT_S)
        assert harness.left == 0
        assert set(harness.writer.events) == {_event(1).event_id}

    def test_messages_received_after_stop_are_handed_back(self) -> None:
        """A receive that returns after shutdown began makes its messages visible again at
        once (visibility 0) and writes nothing."""
        harness = Harness()
        harness.send(_event(1))
        stop = threading.Event()
        harness.sqs.journal.inject("receive_message", lambda _request: stop.set())
        harness.consumer.run(stop)
        assert harness.visibility_changes() == [[0]]
        assert harness.writer.events == {}
        assert harness.left == 1
        assert harness.consumer.stats.handed_back == 1
        (message,) = harness.sqs.queue(QUEUE).messages
        assert message.visible_at <= harness.sqs.now


def _delete_response(failed: Mapping[str, tuple[bool, str]]) -> Callable[[Mapping[str, Any]], Any]:
    """An injected DeleteMessageBatch answer: the entries named in ``failed`` (Id ->
    (SenderFault, Code)) fail, the rest succeed (without the fake deleting anything)."""

    def answer(request: Mapping[str, Any]) -> Any:
        ids = [entry["Id"] for entry in request["Entries"]]
        return {
            "Successful": [{"Id": i} for i in ids if i not in failed],
            "Failed": [
                {"Id": i, "SenderFault": fault, "Code": code, "Message": code}
                for i, (fault, code) in failed.items()
            ],
        }

    return answer


class TestDeletes:
    def test_failed_entries_are_retried_alone(self) -> None:
        """Entries that failed on SQS's side are sent again, only they, after a backoff."""
        harness = Harness()
        harness.resolve()
        for i in range(3):
            harness.send(_event(i))
        harness.sqs.journal.inject(
            "delete_message_batch", _delete_response({"1": (False, "InternalError")})
        )
        assert harness.consumer.poll_once() == 3
        first, second = harness.sqs.journal.of("delete_message_batch")
        assert [e["ReceiptHandle"] for e in second["Entries"]] == [
            first["Entries"][1]["ReceiptHandle"]
        ]
        assert harness.sleeps == [0.2]
        stats = harness.consumer.stats
        assert (stats.deleted, stats.delete_retries, stats.undeleted) == (3, 1, 0)

    def test_expired_receipt_handle_is_counted_not_retried(self) -> None:
        """An entry refused as the sender's fault (receipt handle expired) is not retried:
        it is counted as undeleted, to be redelivered and harmlessly written again."""
        harness = Harness()
        harness.resolve()
        harness.send(_event(1), _event(2))
        harness.send(_event(3))
        harness.sqs.journal.inject(
            "delete_message_batch", _delete_response({"0": (True, "ReceiptHandleIsInvalid")})
        )
        with capture_logs() as logs:
            harness.consumer.poll_once()
        assert len(harness.sqs.journal.of("delete_message_batch")) == 1
        assert harness.sleeps == []
        stats = harness.consumer.stats
        assert (stats.deleted, stats.undeleted, stats.delete_retries) == (1, 1, 0)
        assert [r["event"] for r in logs if r["log_level"] == "warning"] == ["delete_refused"]

    def test_failing_delete_calls_give_up_after_three_attempts(self) -> None:
        """A DeleteMessageBatch that keeps failing is tried three times with growing
        backoff, then left: the message stays on the queue for redelivery, no crash."""
        harness = Harness()
        harness.resolve()
        harness.send(_event(1))
        harness.sqs.journal.inject(
            "delete_message_batch",
            *[client_error("InternalError", "no", "DeleteMessageBatch") for _ in range(3)],
        )
        harness.consumer.poll_once()
        assert len(harness.sqs.journal.of("delete_message_batch")) == 3
        assert harness.sleeps == [0.2, 0.4]
        assert harness.left == 1
        stats = harness.consumer.stats
        assert (stats.deleted, stats.undeleted, stats.delete_retries) == (0, 1, 2)


class TestVisibility:
    def test_slow_write_gets_its_visibility_extended(self) -> None:
        """A write still running after half the visibility timeout has the batch's
        visibility set to the whole timeout again before the write ends; the message is
        then deleted once."""
        extended = threading.Event()
        harness = Harness(
            visibility_s=1,
            writer=MemoryWriter(gate=lambda _ids: extended.wait(_TIMEOUT_S)),
        )
        harness.sqs.journal.inject(
            "change_message_visibility_batch", lambda _request: extended.set()
        )
        harness.send(_event(1))
        stop = threading.Event()
        harness.sqs.journal.inject("delete_message_batch", lambda _request: stop.set())
        thread = harness.start(stop)
        thread.join(_TIMEOUT_S)
        assert not thread.is_alive()
        assert extended.is_set()
        (receive, *_) = harness.sqs.journal.of("receive_message")
        assert receive["VisibilityTimeout"] == 1
        (change,) = harness.sqs.journal.of("change_message_visibility_batch")[:1]
        (delete,) = harness.sqs.journal.of("delete_message_batch")
        assert [e["VisibilityTimeout"] for e in change["Entries"]] == [1]
        assert change["Entries"][0]["ReceiptHandle"] == delete["Entries"][0]["ReceiptHandle"]
        operations = harness.sqs.journal.operations
        assert operations.index("change_message_visibility_batch") < operations.index(
            "delete_message_batch"
        )
        assert harness.consumer.stats.visibility_extended >= 1
        assert harness.left == 0

    def test_quick_write_is_not_extended(self) -> None:
        """A batch handled well within its visibility timeout costs no extension call."""
        harness = Harness()
        harness.send(_event(1))
        stop = threading.Event()
        harness.sqs.journal.inject("delete_message_batch", lambda _request: stop.set())
        thread = harness.start(stop)
        thread.join(_TIMEOUT_S)
        assert not thread.is_alive()
        assert harness.sqs.journal.of("change_message_visibility_batch") == []
        assert harness.left == 0


class AdvancingStop(threading.Event):
    """A stop event whose waits are recorded and move the fake SQS clock on by 1000 s
    instead of passing real time."""

    def __init__(self, sqs: FakeSqs) -> None:
        super().__init__()
        self.sqs = sqs
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        self.sqs.advance(1000)
        return self.is_set()


class TestStoreFailure:
    def test_failed_write_hides_the_messages_for_a_growing_delay(self) -> None:
        """A failed write leaves the message undeleted and sets its visibility to the
        backoff delay (20 s), so it is not received before then; failing again doubles it."""

        def fail(_ids: list[str]) -> None:
            raise WriteError("DynamoDB unavailable")

        harness = Harness(writer=MemoryWriter(fail))
        harness.resolve()
        harness.send(_event(1))
        assert harness.consumer.poll_once() == 1
        assert harness.visibility_changes() == [[20]]
        harness.sqs.advance(19)
        assert harness.consumer.poll_once() == 0
        harness.sqs.advance(2)
        assert harness.consumer.poll_once() == 1
        assert harness.visibility_changes() == [[20], [40]]
        assert harness.sqs.journal.of("delete_message_batch") == []
        stats = harness.consumer.stats
        assert (stats.write_failures, stats.store_backoffs, stats.events_written) == (2, 2, 0)

    def test_poller_backs_off_and_logs_once_per_outage(self) -> None:
        """While writes fail the poller waits longer before each receive (1 s, then 2 s
        ceilings), logs one line when the failures start and one when they end, and the
        events are written once the store answers."""
        failures = iter([True, True, False])

        def flaky(_ids: list[str]) -> None:
            if next(failures):
                raise WriteError("ProvisionedThroughputExceededException")
            stop.set()

        harness = Harness(writer=MemoryWriter(flaky))
        stop = AdvancingStop(harness.sqs)
        harness.send(_event(1))
        with capture_logs() as logs:
            harness.consumer.run(stop)
        events = [r["event"] for r in logs]
        assert events.count("store_write_failing") == 1
        assert events.count("store_write_recovered") == 1
        assert [w for w in stop.waits if w is not None][:2] == [1.0, 2.0]
        assert harness.visibility_changes() == [[20], [40]]
        assert set(harness.writer.events) == {_event(1).event_id}
        assert harness.left == 0


class TestLag:
    def test_lag_histogram_observes_each_written_event(self) -> None:
        """Each written event's occurred-to-ingested lag lands in its bucket and the sum,
        exported as a Prometheus histogram; a failed write observes nothing."""
        harness = Harness()
        harness.resolve()
        harness.send(_event(1, NOW_NS - 3 * _NS // 2), _event(2, NOW_NS - 120 * _NS))
        harness.consumer.poll_once()
        lag = harness.consumer.lag
        assert lag.count == 2
        assert lag.counts[LAG_BUCKETS_S.index(2.0)] == 1
        assert lag.counts[LAG_BUCKETS_S.index(300.0)] == 1
        assert abs(lag.sum_s - 121.5) < 1e-9

        registry = CollectorRegistry()
        registry.register(IngestCollector(harness.consumer))
        text = generate_latest(registry).decode()
        assert 'offpath_ingest_lag_seconds_bucket{le="1.0"} 0.0' in text
        assert 'offpath_ingest_lag_seconds_bucket{le="2.0"} 1.0' in text
        assert 'offpath_ingest_lag_seconds_bucket{le="+Inf"} 2.0' in text
        assert "offpath_ingest_lag_seconds_count 2.0" in text
        assert "offpath_ingest_events_written_total 2.0" in text

        def fail(_ids: list[str]) -> None:
            raise WriteError("down")

        harness.writer.gate = fail
        harness.send(_event(3))
        harness.consumer.poll_once()
        assert harness.consumer.lag.count == 2
