"""Unit tests for offpath.emitter.sender: Sender (records to protobuf to the sink, every
record accounted) and SenderThread (the channel between the event loop and the sender
thread)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from offpath.emitter import EventRecord, ExportResult
from offpath.emitter.sender import Sender, SenderThread
from offpath.testing.waits import eventually, wait_until
from offpath.v1 import analytics_pb2

_WAIT_S = 5.0


class RecordingSink:
    """An EventSink that records every call in order, with the thread it ran on.

    ``result`` decides what export returns (default: all sent); ``export_error``,
    ``prepare_error`` and ``close_error`` make those calls raise; ``gate`` holds
    exports until it is set.
    """

    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.batches: list[list[analytics_pb2.AnalyticsEvent]] = []
        self.deadlines: list[float] = []
        self.result: Callable[[Sequence[analytics_pb2.AnalyticsEvent]], ExportResult] = (
            lambda events: ExportResult(sent=len(events), requests=1)
        )
        self.export_error: Exception | None = None
        self.prepare_error: Exception | None = None
        self.close_error: Exception | None = None
        self.gate = gate
        self.entered = threading.Event()
        self.closed = threading.Event()

    @property
    def operations(self) -> list[str]:
        return [operation for operation, _ in self.calls]

    @property
    def threads(self) -> set[int]:
        return {thread for _, thread in self.calls}

    def export(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(_WAIT_S)
        self.calls.append(("export", threading.get_ident()))
        self.batches.append(list(events))
        self.deadlines.append(deadline)
        if self.export_error is not None:
            raise self.export_error
        return self.result(events)

    def prepare(self) -> None:
        self.calls.append(("prepare", threading.get_ident()))
        if self.prepare_error is not None:
            raise self.prepare_error

    def close(self) -> None:
        self.calls.append(("close", threading.get_ident()))
        self.closed.set()
        if self.close_error is not None:
            raise self.close_error


def _record(i: int = 0, **overrides: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "event_id": f"0190a6f2-7a55-7cc1-9d2b-{i:012d}",
        "occurred_at_ns": 1_790_000_000_000_000_000 + i,
        "service": "offpath.v1.QueryService",
        "method": "/offpath.v1.QueryService/Query",
        "query": f"query {i}",
    }
    fields.update(overrides)
    return EventRecord(**fields)


def _alive(name: str) -> bool:
    return any(thread.name == name for thread in threading.enumerate())


class Channel:
    """A SenderThread over a RecordingSink, with a name unique to the test."""

    def __init__(self, sink: RecordingSink, producer_id: str = "producer-1") -> None:
        self.sink = sink
        self.name = f"test-sender-{uuid.uuid4().hex[:8]}"
        self.thread = SenderThread(Sender(sink, producer_id), name=self.name)


@pytest.fixture
def channel() -> Iterator[Channel]:
    """A running SenderThread; closed (and its thread seen to end) after the test."""
    made = Channel(RecordingSink())
    yield made
    made.thread.close()
    wait_until(lambda: not _alive(made.name))


class TestSender:
    def test_records_become_protobuf_with_the_producer_id(self) -> None:
        """The sink gets each record's wire form stamped with the producer id, in order,
        with the deadline as given, and its result comes back unchanged."""
        sink = RecordingSink()
        expected = ExportResult(sent=3, requests=2, retries=1)
        sink.result = lambda events: expected
        records = [_record(i) for i in range(3)]
        result = Sender(sink, "pod-7").export(records, deadline=1234.5)
        assert result is expected
        assert sink.batches == [[record.to_proto("pod-7") for record in records]]
        assert {event.producer_id for event in sink.batches[0]} == {"pod-7"}
        assert sink.deadlines == [1234.5]

    def test_sink_exception_drops_every_record_as_export_error(self) -> None:
        """A sink that raises loses the whole export: every record is counted
        'export_error', the exception is logged, nothing is raised."""
        sink = RecordingSink()
        sink.export_error = RuntimeError("sink exploded")
        with capture_logs() as logs:
            result = Sender(sink, "p").export([_record(i) for i in range(4)], deadline=0.0)
        assert result == ExportResult(dropped=Counter({"export_error": 4}))
        (entry,) = [e for e in logs if e["event"] == "emitter_export_failed"]
        assert entry["log_level"] == "error"
        assert entry["events"] == 4

    def test_record_that_cannot_become_protobuf_drops_the_export(self) -> None:
        """A record protobuf refuses (a time out of Timestamp's range) is accounted for with
        its whole export as 'export_error', and the sink is not called."""
        sink = RecordingSink()
        records = [_record(0), _record(1, occurred_at_ns=10**30), _record(2)]
        with capture_logs() as logs:
            result = Sender(sink, "p").export(records, deadline=0.0)
        assert result.dropped == Counter({"export_error": 3})
        assert result.sent == 0
        assert sink.calls == []
        assert [e["event"] for e in logs] == ["emitter_export_failed"]

    def test_miscount_is_logged_and_the_result_kept(self) -> None:
        """A sink whose result does not account for every event is logged as
        'emitter_sink_miscount' with both numbers; its result is passed on as is."""
        sink = RecordingSink()
        sink.result = lambda events: ExportResult(sent=1, dropped=Counter({"rejected": 1}))
        with capture_logs() as logs:
            result = Sender(sink, "p").export([_record(i) for i in range(3)], deadline=0.0)
        assert (result.sent, dict(result.dropped)) == (1, {"rejected": 1})
        (entry,) = [e for e in logs if e["event"] == "emitter_sink_miscount"]
        assert entry["log_level"] == "error"
        assert (entry["events"], entry["accounted"]) == (3, 2)

    def test_exact_account_logs_nothing(self) -> None:
        """A sink whose sent and dropped add up to the records given logs no miscount."""
        sink = RecordingSink()
        sink.result = lambda events: ExportResult(sent=2, dropped=Counter({"too_large": 1}))
        with capture_logs() as logs:
            Sender(sink, "p").export([_record(i) for i in range(3)], deadline=0.0)
        assert logs == []

    def test_prepare_calls_the_sink_and_lets_its_error_out(self) -> None:
        """prepare runs the sink's prepare; an error there reaches the caller (the channel
        hands it to the waiting future)."""
        sink = RecordingSink()
        sender = Sender(sink, "p")
        sender.prepare()
        sink.prepare_error = ConnectionError("no endpoint")
        with pytest.raises(ConnectionError, match="no endpoint"):
            sender.prepare()
        assert sink.operations == ["prepare", "prepare"]

    def test_close_swallows_and_logs_the_sinks_error(self) -> None:
        """A sink that fails to close is logged as 'emitter_sink_close_failed', not raised."""
        sink = RecordingSink()
        sink.close_error = OSError("socket already gone")
        with capture_logs() as logs:
            Sender(sink, "p").close()
        assert sink.operations == ["close"]
        (entry,) = [e for e in logs if e["event"] == "emitter_sink_close_failed"]
        assert entry["log_level"] == "error"


class TestSenderThread:
    async def test_calls_run_on_one_other_thread_in_submission_order(
        self, channel: Channel
    ) -> None:
        """Exports and prepares submitted from the loop run one at a time, in the order
        submitted, all on one thread that is not the loop's."""
        futures: list[asyncio.Future[Any]] = []
        for i in range(5):
            futures.append(channel.thread.export([_record(i)], deadline=float(i)))
            if i == 2:
                futures.append(channel.thread.prepare())
        results = await asyncio.wait_for(asyncio.gather(*futures), _WAIT_S)
        assert channel.sink.operations == ["export"] * 3 + ["prepare"] + ["export"] * 2
        assert channel.sink.deadlines == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert [batch[0].event_id for batch in channel.sink.batches] == [
            _record(i).event_id for i in range(5)
        ]
        assert len(channel.sink.threads) == 1
        assert threading.get_ident() not in channel.sink.threads
        assert [r.sent for r in results if isinstance(r, ExportResult)] == [1] * 5

    async def test_a_raising_call_fails_only_its_own_future(self, channel: Channel) -> None:
        """A prepare that raises fails its future with that exception; the calls queued
        before and after it complete normally."""
        channel.sink.prepare_error = ConnectionError("no endpoint")
        before = channel.thread.export([_record(0)], deadline=0.0)
        failing = channel.thread.prepare()
        after = channel.thread.export([_record(1)], deadline=0.0)
        futures: set[asyncio.Future[Any]] = {before, failing, after}
        done, _ = await asyncio.wait(futures, timeout=_WAIT_S)
        assert len(done) == 3
        assert isinstance(failing.exception(), ConnectionError)
        assert before.result().sent == 1
        assert after.result().sent == 1

    async def test_close_closes_the_sink_after_queued_exports_then_ends_the_thread(
        self,
    ) -> None:
        """close queues the sink's close behind the exports already submitted, runs it on
        the sender thread, and the thread then ends."""
        gate = threading.Event()
        made = Channel(RecordingSink(gate=gate))
        try:
            first = made.thread.export([_record(0)], deadline=0.0)
            second = made.thread.export([_record(1)], deadline=0.0)
            await eventually(made.sink.entered.is_set)
            made.thread.close()
            assert not made.sink.closed.is_set()  # the exports come first
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(first, second), _WAIT_S)
            assert [r.sent for r in results] == [1, 1]
            await eventually(lambda: not _alive(made.name))
            assert made.sink.operations == ["export", "export", "close"]
            assert len(made.sink.threads) == 1
            assert threading.get_ident() not in made.sink.threads
        finally:
            gate.set()
            made.thread.close()  # a second close (after the first) is never read: harmless
            await eventually(lambda: not _alive(made.name))

    async def test_futures_resolve_on_the_submitting_loop(self) -> None:
        """Each future belongs to the loop that submitted it and is completed on that loop's
        thread (a completion from the sender thread would trip the loop's debug check)."""
        loop = asyncio.get_running_loop()
        debug = loop.get_debug()
        loop.set_debug(True)
        gate = threading.Event()
        made = Channel(RecordingSink(gate=gate))
        try:
            completed_on: list[int] = []
            export = made.thread.export([_record(0)], deadline=0.0)
            prepare = made.thread.prepare()
            futures: tuple[asyncio.Future[Any], ...] = (export, prepare)
            for future in futures:
                assert future.get_loop() is loop
                future.add_done_callback(lambda _: completed_on.append(threading.get_ident()))
            gate.set()  # only now may the calls complete: their callbacks are in place
            # asyncio.wait, not wait_for(gather()): a future completed on the wrong thread
            # never runs its callbacks, and wait_for would wait for gather forever.
            await asyncio.wait(futures, timeout=_WAIT_S)
            await asyncio.sleep(0)  # done callbacks run one loop iteration later
            assert completed_on == [threading.get_ident()] * 2
        finally:
            gate.set()
            made.thread.close()
            await eventually(lambda: not _alive(made.name))
            loop.set_debug(debug)

    async def test_a_cancelled_future_is_left_alone(self, channel: Channel) -> None:
        """A waiter that gave up (its future cancelled) gets no late result and the loop
        reports no error when the call completes."""
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        gate = threading.Event()
        made = Channel(RecordingSink(gate=gate))
        try:
            abandoned = made.thread.export([_record(0)], deadline=0.0)
            abandoned.cancel()
            later = made.thread.export([_record(1)], deadline=0.0)
            gate.set()
            assert (await asyncio.wait_for(later, _WAIT_S)).sent == 1
            await asyncio.sleep(0.01)
            assert abandoned.cancelled()
            assert made.sink.operations == ["export", "export"]
            assert errors == []
        finally:
            gate.set()
            made.thread.close()
            await eventually(lambda: not _alive(made.name))
            loop.set_exception_handler(previous)

    def test_a_call_whose_loop_is_gone_does_not_stop_the_thread(self) -> None:
        """When the loop that submitted a call closed before the call finished, the thread
        drops the outcome and goes on serving later calls."""
        gate = threading.Event()
        made = Channel(RecordingSink(gate=gate))
        try:

            async def submit(i: int) -> asyncio.Future[ExportResult]:
                return made.thread.export([_record(i)], deadline=0.0)

            async def send(i: int) -> ExportResult:
                return await asyncio.wait_for(await submit(i), _WAIT_S)

            gone = asyncio.new_event_loop()
            try:
                orphan = gone.run_until_complete(submit(0))
            finally:
                gone.close()
            gate.set()
            assert asyncio.run(send(1)).sent == 1
            assert not orphan.done()
            assert made.sink.operations == ["export", "export"]
            assert _alive(made.name)
        finally:
            gate.set()
            made.thread.close()
            wait_until(lambda: not _alive(made.name))
