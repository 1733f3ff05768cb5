"""Unit tests for offpath.emitter.emitter.Emitter (over a fake sink) and EventRecord."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from offpath.emitter import Emitter, EmitterSettings, EventRecord, ExportResult
from offpath.testing.waits import eventually
from offpath.v1 import analytics_pb2

_GATE_TIMEOUT_S = 5.0


class FakeSink:
    """An EventSink that records what it is given, and on which thread.

    ``fail_calls`` makes the next n exports raise; ``gate`` makes exports wait
    until it is set (a backend that hangs). ``prepare_error`` makes prepare
    raise it; ``prepare_gate`` makes prepare wait until it is set.
    """

    def __init__(
        self,
        *,
        gate: threading.Event | None = None,
        prepare_gate: threading.Event | None = None,
        prepare_error: Exception | None = None,
    ) -> None:
        self.batches: list[list[analytics_pb2.AnalyticsEvent]] = []
        self.threads: set[int] = set()
        self.deadlines: list[float] = []
        self.called_at: list[float] = []
        self.fail_calls = 0
        self.gate = gate
        self.entered = threading.Event()
        self.returned = threading.Event()
        self.prepare_gate = prepare_gate
        self.prepare_error = prepare_error
        self.prepare_threads: list[int] = []
        self.prepared = threading.Event()
        self.close_threads: list[int] = []
        self.close_called = threading.Event()
        self.order: list[str] = []  # "export" and "close", as they finished

    @property
    def events(self) -> list[analytics_pb2.AnalyticsEvent]:
        return [event for batch in self.batches for event in batch]

    @property
    def closed(self) -> int:
        return len(self.close_threads)

    def export(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult:
        self.threads.add(threading.get_ident())
        self.deadlines.append(deadline)
        self.called_at.append(time.monotonic())
        self.entered.set()
        try:
            if self.gate is not None:
                self.gate.wait(_GATE_TIMEOUT_S)
            if self.fail_calls:
                self.fail_calls -= 1
                raise RuntimeError("sink exploded")
            self.batches.append(list(events))
            return ExportResult(sent=len(events), requests=1)
        finally:
            self.order.append("export")
            self.returned.set()

    def prepare(self) -> None:
        self.prepare_threads.append(threading.get_ident())
        try:
            if self.prepare_gate is not None:
                self.prepare_gate.wait(_GATE_TIMEOUT_S)
            if self.prepare_error is not None:
                raise self.prepare_error
        finally:
            self.prepared.set()

    def close(self) -> None:
        self.close_threads.append(threading.get_ident())
        self.order.append("close")
        self.close_called.set()

    def release(self) -> None:
        """Unblock whatever waits on a gate."""
        for gate in (self.gate, self.prepare_gate):
            if gate is not None:
                gate.set()


def _settings(**overrides: Any) -> EmitterSettings:
    base = EmitterSettings(
        queue_name="events.fifo",
        producer_id="producer-1",
        linger_s=0.05,
        max_queue_size=1_000,
        events_per_message=2,  # max_export_batch == 20
        retry_deadline_s=5.0,
        drain_timeout_s=2.0,
    )
    return dataclasses.replace(base, **overrides)


def _record(i: int = 0, **overrides: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "event_id": f"0190a6f2-7a55-7cc1-9d2b-{i:012d}",
        "occurred_at_ns": 1_790_000_000_000_000_000 + i,
        "service": "offpath.v1.QueryService",
        "method": "/offpath.v1.QueryService/Query",
    }
    fields.update(overrides)
    return EventRecord(**fields)


def _accounted(emitter: Emitter) -> int:
    stats = emitter.stats
    return stats.sent + sum(stats.dropped.values())


MakeEmitter = Callable[..., tuple[Emitter, FakeSink]]


@pytest.fixture
async def make_emitter() -> AsyncIterator[MakeEmitter]:
    """Builds emitters over fake sinks; shuts every one down (and unblocks its sink) after,
    and waits until each sink is closed, so no sender thread outlives its test."""
    made: list[tuple[Emitter, FakeSink]] = []

    def make(
        *,
        start: bool = True,
        gate: threading.Event | None = None,
        prepare_gate: threading.Event | None = None,
        prepare_error: Exception | None = None,
        **overrides: Any,
    ) -> tuple[Emitter, FakeSink]:
        sink = FakeSink(gate=gate, prepare_gate=prepare_gate, prepare_error=prepare_error)
        emitter = Emitter(sink, _settings(**overrides))
        if start:
            emitter.start()
        made.append((emitter, sink))
        return emitter, sink

    yield make
    for emitter, sink in made:
        sink.release()
        await emitter.shutdown(timeout=1.0)
    for _, sink in made:
        await eventually(sink.close_called.is_set, timeout=_GATE_TIMEOUT_S + 1.0)


class TestEmit:
    async def test_emit_is_non_blocking_and_off_the_callers_thread(
        self, make_emitter: MakeEmitter
    ) -> None:
        """emit returns at once even while the sink hangs; the sink runs on another thread."""
        gate = threading.Event()
        emitter, sink = make_emitter(gate=gate)
        assert emitter.emit(_record(0))
        await eventually(sink.entered.is_set)  # the sink is now stuck in export
        started = time.perf_counter()
        results = [emitter.emit(_record(i)) for i in range(1, 101)]
        elapsed = time.perf_counter() - started
        assert all(results)
        assert elapsed < 2.0  # the sink is stuck until released; a blocking emit would wait
        assert sink.batches == []
        gate.set()
        await emitter.shutdown()
        assert [e.event_id for e in sink.events] == [_record(i).event_id for i in range(101)]
        assert threading.get_ident() not in sink.threads

    async def test_emit_does_not_call_the_sink_synchronously(
        self, make_emitter: MakeEmitter
    ) -> None:
        """Right after emit returns, nothing has been exported: the flusher does it later."""
        emitter, sink = make_emitter()
        for i in range(25):  # more than a full export batch
            emitter.emit(_record(i))
        assert not sink.entered.is_set()
        assert emitter.pending == 25
        await emitter.shutdown()
        assert len(sink.events) == 25

    async def test_queue_full_drops_newest_and_never_raises(
        self, make_emitter: MakeEmitter
    ) -> None:
        """Beyond max_queue_size, emit returns False and counts queue_full; older events stay."""
        emitter, sink = make_emitter(start=False, max_queue_size=5)
        results = [emitter.emit(_record(i)) for i in range(8)]
        assert results == [True] * 5 + [False] * 3
        assert emitter.stats.dropped["queue_full"] == 3
        assert emitter.stats.enqueued == 5
        emitter.start()
        await emitter.shutdown()
        assert [e.event_id for e in sink.events] == [_record(i).event_id for i in range(5)]

    async def test_emit_after_shutdown_is_counted(self, make_emitter: MakeEmitter) -> None:
        """After shutdown, emit returns False, counts 'shutdown' and never reaches the sink."""
        emitter, sink = make_emitter()
        await emitter.shutdown()
        assert emitter.emit(_record(1)) is False
        assert emitter.emit(_record(2)) is False
        assert emitter.stats.dropped["shutdown"] == 2
        assert emitter.stats.emitted == 2
        assert sink.batches == []

    async def test_records_reach_the_sink_as_protobuf_with_the_producer_id(
        self, make_emitter: MakeEmitter
    ) -> None:
        """What the sink receives is each record's wire form, stamped with the producer id."""
        emitter, sink = make_emitter(producer_id="pod-7")
        records = [_record(i, query=f"q{i}") for i in range(3)]
        for record in records:
            emitter.emit(record)
        await emitter.shutdown()
        assert sink.events == [record.to_proto("pod-7") for record in records]


class TestFlushing:
    async def test_flushes_after_linger(self, make_emitter: MakeEmitter) -> None:
        """A lone event (far below a full batch) waits for the linger, then is exported."""
        emitter, sink = make_emitter(linger_s=0.2)
        emitted_at = time.monotonic()
        emitter.emit(_record(1))
        await asyncio.sleep(0.05)
        assert sink.batches == []
        await eventually(lambda: len(sink.events) == 1)
        assert sink.called_at[0] - emitted_at < 2.0
        assert emitter.stats.sent == 1
        await emitter.shutdown()

    async def test_flushes_early_when_a_full_batch_is_waiting(
        self, make_emitter: MakeEmitter
    ) -> None:
        """Reaching max_export_batch wakes the flusher long before a 5 s linger."""
        emitter, sink = make_emitter(linger_s=5.0)
        for i in range(19):
            emitter.emit(_record(i))
        await asyncio.sleep(0.05)
        assert sink.batches == []  # one short of a full batch: still lingering
        started = time.monotonic()
        emitter.emit(_record(19))
        await eventually(lambda: len(sink.batches) == 1, timeout=3.0)
        assert time.monotonic() - started < 3.0
        assert len(sink.batches[0]) == 20
        await emitter.shutdown()

    async def test_exports_at_most_max_export_batch_at_once(
        self, make_emitter: MakeEmitter
    ) -> None:
        """A backlog is handed to the sink in chunks of max_export_batch, oldest first."""
        emitter, sink = make_emitter(start=False)
        for i in range(45):
            emitter.emit(_record(i))
        emitter.start()
        await eventually(lambda: len(sink.events) == 45)
        assert [len(batch) for batch in sink.batches] == [20, 20, 5]
        assert [e.event_id for e in sink.events] == [_record(i).event_id for i in range(45)]
        await emitter.shutdown()

    async def test_force_flush_exports_now(self, make_emitter: MakeEmitter) -> None:
        """force_flush sends what is buffered without waiting for the linger."""
        emitter, sink = make_emitter(linger_s=5.0)
        emitter.emit(_record(1))
        await asyncio.wait_for(emitter.force_flush(), timeout=1.0)
        assert len(sink.events) == 1
        assert emitter.pending == 0
        await emitter.shutdown()

    async def test_sink_errors_are_counted_and_the_flusher_keeps_going(
        self, make_emitter: MakeEmitter
    ) -> None:
        """An export that raises drops its events as 'export_error'; later events still go."""
        emitter, sink = make_emitter()
        sink.fail_calls = 1
        for i in range(3):
            emitter.emit(_record(i))
        await eventually(lambda: emitter.stats.dropped["export_error"] == 3)
        for i in range(3, 5):
            emitter.emit(_record(i))
        await eventually(lambda: emitter.stats.sent == 2)
        assert [e.event_id for e in sink.events] == [_record(3).event_id, _record(4).event_id]
        await emitter.shutdown()
        assert emitter.stats.dropped["export_error"] == 3

    async def test_events_arriving_during_an_export_wait_for_the_next_linger(
        self, make_emitter: MakeEmitter
    ) -> None:
        """Events emitted while an export is in flight are not chased with an
        immediate small export: they go out together at the next linger."""
        gate = threading.Event()
        emitter, sink = make_emitter(gate=gate, linger_s=0.3)
        emitter.emit(_record(0))
        await eventually(sink.entered.is_set)  # first export in flight, held
        for i in range(1, 6):
            emitter.emit(_record(i))
        gate.set()
        await eventually(lambda: len(sink.batches) == 1)
        await asyncio.sleep(0.1)  # well inside the next linger
        assert len(sink.batches) == 1
        await eventually(lambda: len(sink.batches) == 2)
        assert len(sink.batches[1]) == 5
        await emitter.shutdown()


class TestPrepare:
    async def test_prepare_warms_the_sink_up_on_the_sender_thread(
        self, make_emitter: MakeEmitter
    ) -> None:
        """prepare returns True once the sink's prepare ran, on the thread that later exports."""
        emitter, sink = make_emitter(linger_s=5.0)
        assert await emitter.prepare(timeout=_GATE_TIMEOUT_S) is True
        assert len(sink.prepare_threads) == 1
        emitter.emit(_record(1))
        await emitter.force_flush()
        assert sink.threads == set(sink.prepare_threads)
        assert threading.get_ident() not in sink.threads
        await emitter.shutdown()

    async def test_failed_prepare_returns_false_logs_and_serving_goes_on(
        self, make_emitter: MakeEmitter
    ) -> None:
        """A sink whose prepare raises makes prepare return False with the error logged;
        events emitted afterwards are still sent."""
        emitter, sink = make_emitter(linger_s=5.0, prepare_error=RuntimeError("no queue"))
        with capture_logs() as logs:
            assert await emitter.prepare(timeout=_GATE_TIMEOUT_S) is False
        warnings = [entry for entry in logs if entry["event"] == "emitter_warm_up_failed"]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["error"] == "RuntimeError: no queue"
        assert emitter.emit(_record(1))
        await emitter.force_flush()
        assert [e.event_id for e in sink.events] == [_record(1).event_id]
        stats = await emitter.shutdown()
        assert stats.sent == 1
        assert sum(stats.dropped.values()) == 0

    async def test_slow_prepare_returns_false_at_the_timeout(
        self, make_emitter: MakeEmitter
    ) -> None:
        """A prepare that outlasts its timeout returns False in about the timeout, logged as a
        timeout; events emitted meanwhile are sent once the sink is free."""
        prepare_gate = threading.Event()
        emitter, sink = make_emitter(linger_s=5.0, prepare_gate=prepare_gate)
        started = time.monotonic()
        with capture_logs() as logs:
            assert await emitter.prepare(timeout=0.1) is False
        assert time.monotonic() - started < _GATE_TIMEOUT_S - 1.0  # not held by the sink
        errors = [entry["error"] for entry in logs if entry["event"] == "emitter_warm_up_failed"]
        assert len(errors) == 1
        assert errors[0].startswith("TimeoutError")
        assert emitter.emit(_record(1))
        prepare_gate.set()
        await asyncio.wait_for(emitter.force_flush(), timeout=_GATE_TIMEOUT_S)
        assert [e.event_id for e in sink.events] == [_record(1).event_id]
        await emitter.shutdown()

    async def test_prepare_before_start_is_refused(self, make_emitter: MakeEmitter) -> None:
        """prepare needs the sender thread, so it raises before start instead of hanging."""
        emitter, sink = make_emitter(start=False)
        with pytest.raises(RuntimeError, match="not started"):
            await emitter.prepare(timeout=1.0)
        assert sink.prepare_threads == []
        await emitter.shutdown()


class TestShutdown:
    async def test_shutdown_drains_the_buffer(self, make_emitter: MakeEmitter) -> None:
        """Shutdown exports everything buffered, without waiting out a long linger."""
        emitter, sink = make_emitter(linger_s=5.0)
        for i in range(7):
            emitter.emit(_record(i))
        started = time.monotonic()
        stats = await emitter.shutdown()
        assert time.monotonic() - started < 3.0
        assert len(sink.events) == 7
        assert stats.sent == 7
        assert sum(stats.dropped.values()) == 0

    async def test_sink_is_closed_on_the_sender_thread_after_the_drain(
        self, make_emitter: MakeEmitter
    ) -> None:
        """Shutdown closes the sink once, on the thread that exported, after the last export."""
        emitter, sink = make_emitter(linger_s=5.0)
        emitter.emit(_record(1))
        await emitter.shutdown()
        await eventually(sink.close_called.is_set)
        assert sink.close_threads == list(sink.threads)
        assert threading.get_ident() not in sink.close_threads
        assert sink.order == ["export", "close"]
        assert len(sink.events) == 1

    async def test_sink_of_an_emitter_never_started_is_closed_without_a_thread(
        self, make_emitter: MakeEmitter
    ) -> None:
        """An emitter never started closes its sink once, right away, on the caller's thread."""
        emitter, sink = make_emitter(start=False)
        await emitter.shutdown()
        assert sink.close_threads == [threading.get_ident()]
        await emitter.shutdown()
        assert sink.closed == 1

    async def test_shutdown_twice_is_safe(self, make_emitter: MakeEmitter) -> None:
        """A second shutdown, concurrent or later, waits for the first and closes nothing twice."""
        emitter, sink = make_emitter(linger_s=5.0)
        for i in range(3):
            emitter.emit(_record(i))
        first, second = await asyncio.gather(emitter.shutdown(), emitter.shutdown())
        third = await emitter.shutdown()
        assert first.sent == second.sent == third.sent == 3
        assert len(sink.events) == 3
        await eventually(sink.close_called.is_set)
        assert sink.closed == 1

    async def test_shutdown_bounds_the_sinks_deadline(self, make_emitter: MakeEmitter) -> None:
        """During the drain, the sink's deadline is the drain deadline, not the retry deadline."""
        emitter, sink = make_emitter(linger_s=5.0, retry_deadline_s=60.0, drain_timeout_s=0.5)
        emitter.emit(_record(1))
        before = time.monotonic()
        await emitter.shutdown()
        assert len(sink.deadlines) == 1
        assert sink.deadlines[0] <= before + 0.5 + 0.05

    async def test_hung_sink_shutdown_returns_at_the_timeout(
        self, make_emitter: MakeEmitter
    ) -> None:
        """A sink stuck past the drain timeout: shutdown returns in about the timeout and counts
        the in-flight and buffered events as 'shutdown_unsent', once."""
        gate = threading.Event()
        emitter, sink = make_emitter(gate=gate, drain_timeout_s=0.2)
        for i in range(4):
            emitter.emit(_record(i))
        await eventually(sink.entered.is_set)
        for i in range(4, 7):
            emitter.emit(_record(i))  # buffered behind the stuck export
        started = time.monotonic()
        stats = await emitter.shutdown()
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 3.0  # the sink would hang until released
        assert stats.dropped["shutdown_unsent"] == 7
        assert stats.sent == 0
        assert not sink.close_called.is_set()  # queued behind the stuck export
        # The late answer from the sender must not be counted a second time.
        gate.set()
        await eventually(sink.close_called.is_set)
        assert sink.order == ["export", "close"]
        await asyncio.sleep(0.02)
        assert emitter.stats.sent == 0
        assert _accounted(emitter) == emitter.stats.emitted == 7

    async def test_shutdown_timeout_argument_overrides_the_setting(
        self, make_emitter: MakeEmitter
    ) -> None:
        """shutdown(timeout=...) bounds the wait instead of the configured drain timeout."""
        gate = threading.Event()
        emitter, sink = make_emitter(gate=gate, drain_timeout_s=30.0)
        emitter.emit(_record(1))
        await eventually(sink.entered.is_set)
        started = time.monotonic()
        stats = await emitter.shutdown(timeout=0.1)
        assert time.monotonic() - started < 3.0  # vs the 30 s setting
        assert stats.dropped["shutdown_unsent"] == 1
        gate.set()
        await eventually(sink.returned.is_set)

    async def test_shutdown_without_start(self, make_emitter: MakeEmitter) -> None:
        """An emitter never started counts what it buffered as unsent and sends nothing."""
        emitter, sink = make_emitter(start=False)
        emitter.emit(_record(1))
        emitter.emit(_record(2))
        stats = await emitter.shutdown()
        assert stats.dropped["shutdown_unsent"] == 2
        assert sink.batches == []
        assert sink.closed == 1

    async def test_start_twice_is_refused(self, make_emitter: MakeEmitter) -> None:
        """A second start raises instead of running two flushers."""
        emitter, _ = make_emitter()
        with pytest.raises(RuntimeError, match="already started"):
            emitter.start()
        await emitter.shutdown()


class TestStats:
    async def test_every_emitted_event_is_counted_once(self, make_emitter: MakeEmitter) -> None:
        """Across queue_full, export_error, sent and shutdown drops, the counters add up to the
        number of emit calls."""
        emitter, sink = make_emitter(start=False, max_queue_size=10)
        calls = 0
        accepted = 0
        for i in range(15):  # 5 over the buffer
            accepted += emitter.emit(_record(i))
            calls += 1
        sink.fail_calls = 1
        emitter.start()
        await eventually(lambda: emitter.stats.dropped["export_error"] == 10)
        for i in range(15, 25):  # fits the buffer again
            accepted += emitter.emit(_record(i))
            calls += 1
        await emitter.shutdown()
        for i in range(25, 28):
            accepted += emitter.emit(_record(i))
            calls += 1
        stats = emitter.stats
        assert stats.dropped["queue_full"] == 5
        assert stats.dropped["shutdown"] == 3
        assert stats.enqueued == accepted
        assert stats.sent == len(sink.events)
        assert stats.sent + sum(stats.dropped.values()) == stats.emitted == calls

    async def test_stats_is_a_snapshot(self, make_emitter: MakeEmitter) -> None:
        """The stats property returns a copy that later activity does not change."""
        emitter, _ = make_emitter(start=False, max_queue_size=1)
        emitter.emit(_record(1))
        snapshot = emitter.stats
        emitter.emit(_record(2))
        assert snapshot.dropped["queue_full"] == 0
        assert emitter.stats.dropped["queue_full"] == 1
        assert snapshot.as_dict() == {
            "enqueued": 1,
            "sent": 0,
            "requests": 0,
            "retries": 0,
            "dropped": {},
            "spooled": 0,
            "replayed": 0,
            "recovered": 0,
        }
        await emitter.shutdown()


class TestEventRecord:
    def test_to_proto_maps_every_field(self) -> None:
        """Every AnalyticsEvent field is filled from the record, durations and times exactly."""
        record = EventRecord(
            event_id="0190a6f2-7a55-7cc1-9d2b-1a2b3c4d5e6f",
            occurred_at_ns=1_790_000_000_123_456_789,
            service="offpath.v1.QueryService",
            method="/offpath.v1.QueryService/Query",
            query="does she know kubernetes?",
            matched_skills=(("Kubernetes", 0.75), ("Go", 0.5)),
            processing_ns=2_000_000_007,
            model="tiny-lm",
            token_count=42,
            status_code=3,
            attributes={"region": "eu-west-1", "tier": "free"},
        )
        event = record.to_proto("host-1")
        assert event.event_id == record.event_id
        assert (event.occurred_at.seconds, event.occurred_at.nanos) == (1_790_000_000, 123_456_789)
        assert (event.processing_time.seconds, event.processing_time.nanos) == (2, 7)
        assert event.service == record.service
        assert event.method == record.method
        assert event.query == record.query
        assert [(s.name, s.score) for s in event.matched_skills] == [
            ("Kubernetes", 0.75),
            ("Go", 0.5),
        ]
        assert event.model == "tiny-lm"
        assert event.token_count == 42
        assert event.status_code == 3
        assert dict(event.attributes) == {"region": "eu-west-1", "tier": "free"}
        assert event.producer_id == "host-1"
        set_fields = {descriptor.name for descriptor, _ in event.ListFields()}
        assert set_fields == set(analytics_pb2.AnalyticsEvent.DESCRIPTOR.fields_by_name)

    def test_to_proto_of_a_minimal_record(self) -> None:
        """Optional fields left at their defaults produce zero values, not errors."""
        event = _record(5).to_proto("p")
        assert event.occurred_at.nanos == 5
        assert event.processing_time.seconds == event.processing_time.nanos == 0
        assert len(event.matched_skills) == 0
        assert len(event.attributes) == 0
        assert event.producer_id == "p"
