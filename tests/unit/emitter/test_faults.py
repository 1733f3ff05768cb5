"""The emitter's accounting while SQS is in trouble (FakeSqs with injected faults):
attempts, retries and the events waiting for a retry move while an outage lasts,
partial batch failures are retried per entry and counted, a shutdown during an
outage spools what is unconfirmed (spool on) or counts it under a reason and logs
events_lost (spool off), and a restarted sender reports what the previous run left."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from offpath.emitter.child import SenderProcess
from offpath.emitter.emitter import Emitter
from offpath.emitter.frames import FrameReader, decode
from offpath.emitter.process import ProcessEmitter
from offpath.emitter.record import EventRecord
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.spool import Spool, read_file
from offpath.emitter.sqs import SqsSink
from offpath.testing.sinks import FileSink, read_batches
from offpath.testing.sqs import OUTAGE_KINDS, FakeSqs
from offpath.testing.waits import eventually
from offpath.v1 import analytics_pb2

QUEUE = "events.fifo"
SINK = "offpath.testing.sqs:fake_sqs_sink"
START_S = 20.0  # a fresh interpreter importing boto3: generous on a busy machine


class FakeTime:
    """A monotonic clock that moves only when the sink sleeps; each sleep notes the
    sink's live counters as a scrape during that wait would see them."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sink: SqsSink | None = None
        self.seen: list[tuple[int, int, int]] = []  # (requests, retries, retrying)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert self.sink is not None
        progress = self.sink.progress
        self.seen.append((progress.requests, progress.retries, progress.retrying))
        self.now += seconds


def _settings(**overrides: Any) -> EmitterSettings:
    base = EmitterSettings(
        queue_name=QUEUE, producer_id="producer-1", linger_s=0.05, retry_deadline_s=30.0
    )
    return dataclasses.replace(base, **overrides)


def _event(i: int) -> analytics_pb2.AnalyticsEvent:
    return analytics_pb2.AnalyticsEvent(event_id=f"event-{i:06d}", query=f"q{i}")


def _record(i: int) -> EventRecord:
    return EventRecord(f"event-{i:06d}", 1_790_000_000_000_000_000 + i, "s", "/s/M", query=f"q{i}")


def _ids(n: int, start: int = 0) -> set[str]:
    return {f"event-{i:06d}" for i in range(start, start + n)}


def _fake_sink(settings: EmitterSettings) -> tuple[SqsSink, FakeSqs, FakeTime]:
    sqs = FakeSqs()
    url = sqs.add_queue(QUEUE, FifoQueue="true")
    time_ = FakeTime()
    sink = SqsSink(
        dataclasses.replace(settings, queue_url=url),
        client_factory=lambda: sqs,
        sleep=time_.sleep,
        clock=time_.clock,
        rng=lambda: 1.0,
    )
    time_.sink = sink
    return sink, sqs, time_


def _calls(sqs: FakeSqs) -> list[dict[str, Any]]:
    return sqs.journal.of("send_message_batch")


def _delivered(path: Path) -> list[str]:
    return [event_id for batch in read_batches(path) for event_id in batch]


def _process_emitter(
    settings: EmitterSettings, out: Path, flag: Path, kind: str = "unreachable"
) -> ProcessEmitter:
    arg = json.dumps({"path": str(out), "down_while": str(flag), "kind": kind})
    return ProcessEmitter(settings, sink_factory=SINK, sink_arg=arg)


def _wal_events(spool: Path) -> int:
    return sum(len(read_file(path).events) for path in spool.glob("wal-*"))


class TestSinkCountsEachAttempt:
    @pytest.mark.parametrize("kind", OUTAGE_KINDS)
    def test_attempts_retries_and_waiting_events_move_while_the_outage_lasts(
        self, kind: str
    ) -> None:
        """Three failed calls then a good one: at every wait between attempts the live
        counters already show each failed call and retry so far and the events waiting;
        afterwards the calls are counted by outcome and nothing waits."""
        sink, sqs, time_ = _fake_sink(_settings())
        sqs.outage(kind, while_=lambda: len(_calls(sqs)) <= 3)
        result = sink.export([_event(i) for i in range(7)], deadline=time_.now + 30)
        assert time_.seen == [(1, 1, 7), (2, 2, 7), (3, 3, 7)]
        assert result.sent == 7
        assert sink.progress.outcomes == Counter({kind: 3, "ok": 1})
        assert (sink.progress.requests, sink.progress.retries) == (4, 3)
        assert sink.progress.retrying == 0
        assert result.outcomes == sink.progress.outcomes
        assert sum(sink.progress.latencies.counts) == 4

    def test_giving_up_leaves_nothing_waiting(self) -> None:
        """A batch given up on at its deadline leaves the gauge at zero and its
        events counted as send_failed (what the spool then keeps)."""
        sink, sqs, time_ = _fake_sink(_settings())
        sqs.outage("unreachable")
        result = sink.export([_event(i) for i in range(3)], deadline=time_.now + 3)
        assert result.dropped == Counter({"send_failed": 3})
        assert len(result.unsent) == 3
        assert sink.progress.retrying == 0
        assert sink.progress.outcomes["unreachable"] == len(_calls(sqs)) >= 2

    def test_partial_failure_is_retried_per_entry_and_counted(self) -> None:
        """Entries listed as Failed (not the sender's fault) are resent alone, unchanged
        (same Id, same dedup id), counted as a partial call; the gauge holds exactly the
        failed entries' events while they wait."""
        sink, sqs, time_ = _fake_sink(_settings(events_per_message=1))
        sqs.fail_entries(lambda position: position % 2 == 0)
        result = sink.export([_event(i) for i in range(6)], deadline=time_.now + 30)
        first, second = _calls(sqs)
        assert second["Entries"] == [first["Entries"][i] for i in (0, 2, 4)]
        assert time_.seen == [(1, 1, 3)]
        assert result.sent == 6
        assert sink.progress.outcomes == Counter({"partial": 1, "ok": 1})
        assert sink.progress.retrying == 0
        assert len(sqs.queue(QUEUE).messages) == 6


class TestThreadEmitter:
    async def test_counters_move_during_an_outage_then_everything_is_sent(self) -> None:
        """While SQS is unreachable the thread emitter's stats show failed calls,
        retries and the events waiting, before any batch gives up; once SQS is back
        every event is sent and nothing waits."""
        sqs = FakeSqs()
        sqs.add_queue(QUEUE, FifoQueue="true")
        sqs.outage("unreachable")
        settings = _settings()
        emitter = Emitter(SqsSink(settings, client_factory=lambda: sqs), settings)
        emitter.start()
        try:
            for i in range(10):
                assert emitter.emit(_record(i))
            await eventually(
                lambda: (
                    emitter.stats.outcomes["unreachable"] >= 2
                    and emitter.stats.retries >= 1
                    and emitter.stats.retrying == 10
                ),
                10,
            )
            assert emitter.stats.sent == 0
            assert not emitter.stats.dropped
            sqs.recover()
            await eventually(lambda: emitter.stats.sent == 10, 15)
            stats = emitter.stats
            assert stats.retrying == 0
            assert stats.outcomes["ok"] == 1
            assert stats.requests == sum(stats.outcomes.values())
        finally:
            await emitter.shutdown(5)

    async def test_shutdown_during_an_outage_counts_and_logs_the_loss(self) -> None:
        """A shutdown while a send retries returns within the drain timeout and counts
        every unconfirmed event as shutdown_unsent, in the stats and in one events_lost
        log line by reason."""
        sqs = FakeSqs()
        sqs.add_queue(QUEUE, FifoQueue="true")
        sqs.outage("unreachable")
        settings = _settings()
        emitter = Emitter(SqsSink(settings, client_factory=lambda: sqs), settings)
        emitter.start()
        for i in range(10):
            emitter.emit(_record(i))
        await eventually(lambda: emitter.stats.retrying == 10, 10)
        started = time.monotonic()
        with capture_logs() as logs:
            stats = await emitter.shutdown(0.5)
        assert time.monotonic() - started < 1.5
        assert stats.dropped == Counter({"shutdown_unsent": 10})
        lost = [line for line in logs if line["event"] == "events_lost"]
        assert len(lost) == 1
        assert lost[0]["by_reason"] == {"shutdown_unsent": 10}
        assert lost[0]["emitted"] == 10


class TestSenderProcess:
    async def test_counters_move_during_an_outage_then_everything_is_sent(
        self, tmp_path: Path
    ) -> None:
        """The sender process reports failed calls, retries and the events waiting while
        the outage lasts (not only when a batch gives up); once SQS is back every event
        is delivered and the books balance."""
        out, flag = tmp_path / "sent.jsonl", tmp_path / "down"
        flag.touch()
        emitter = _process_emitter(_settings(), out, flag)
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            for i in range(20):
                assert emitter.emit(_record(i))
            await eventually(
                lambda: (
                    emitter.stats.outcomes["unreachable"] >= 2
                    and emitter.stats.retries >= 1
                    and emitter.stats.retrying == 20
                ),
                START_S,
            )
            assert flag.exists()
            assert emitter.stats.sent == 0
            assert emitter.pending == 20
            flag.unlink()
            await eventually(lambda: emitter.stats.sent == 20, START_S)
            assert emitter.stats.retrying == 0
        finally:
            stats = await emitter.shutdown(10)
        assert sorted(_delivered(out)) == sorted(_ids(20))
        assert stats.enqueued == stats.sent == 20
        assert stats.requests == sum(stats.outcomes.values())

    async def test_shutdown_during_an_outage_spools_everything_then_it_is_delivered(
        self, tmp_path: Path
    ) -> None:
        """Spool on: a shutdown while a send retries (and more events arrived since)
        ends within the drain timeout with every event spooled, none dropped; the next
        start, with SQS back, delivers them all: delivered = emitted."""
        out, flag, spool = tmp_path / "sent.jsonl", tmp_path / "down", tmp_path / "spool"
        flag.touch()
        settings = _settings(spool_dir=str(spool))
        down = _process_emitter(settings, out, flag)
        down.start()
        assert await down.prepare(START_S)
        for i in range(20):
            down.emit(_record(i))
        await eventually(lambda: down.stats.retrying == 20, START_S)
        for i in range(20, 30):
            down.emit(_record(i))
        # Read by the sender while its send retries: in its write-ahead log.
        await eventually(lambda: _wal_events(spool) == 30, 10)
        started = time.monotonic()
        stats = await down.shutdown(1.0)
        assert time.monotonic() - started < 2.0
        assert stats.spooled == 30
        assert stats.dropped == Counter()
        assert stats.sent == 0
        flag.unlink()
        up = _process_emitter(settings, out, flag)
        up.start()
        try:
            assert await up.prepare(START_S)
            await eventually(lambda: up.stats.replayed == 30, START_S)
        finally:
            await up.shutdown(10)
        assert sorted(_delivered(out)) == sorted(_ids(30))
        assert not list(spool.glob("*.events"))

    async def test_shutdown_during_an_outage_without_a_spool_counts_every_loss(
        self, tmp_path: Path
    ) -> None:
        """Spool off: a shutdown while a send retries ends within the drain timeout;
        every unconfirmed event, those read since included, is counted as
        shutdown_unsent and named in one events_lost log line."""
        out, flag = tmp_path / "sent.jsonl", tmp_path / "down"
        flag.touch()
        emitter = _process_emitter(_settings(), out, flag)
        emitter.start()
        assert await emitter.prepare(START_S)
        for i in range(20):
            emitter.emit(_record(i))
        await eventually(lambda: emitter.stats.retrying == 20, START_S)
        for i in range(20, 30):
            emitter.emit(_record(i))
        started = time.monotonic()
        with capture_logs() as logs:
            stats = await emitter.shutdown(1.0)
        assert time.monotonic() - started < 2.0
        assert stats.dropped == Counter({"shutdown_unsent": 30})
        assert stats.sent + stats.spooled == 0
        lost = [line for line in logs if line["event"] == "events_lost"]
        assert [line["by_reason"] for line in lost] == [{"shutdown_unsent": 30}]
        assert _delivered(out) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class TestRestartReport:
    def test_sender_reports_what_the_previous_run_left(self, tmp_path: Path) -> None:
        """At start a sender adopts the WAL of a sender that died and takes stock of
        the spool: one spool_recovered log line with the orphaned WALs, the files and
        events pending and their bytes; its reports count the recovered events and the
        spool's files and bytes."""
        spool_dir = tmp_path / "spool"
        earlier = Spool(spool_dir, max_bytes=1 << 20)
        assert earlier.park([_event(i) for i in range(5)]) == (5, 0)
        wal = spool_dir / f"wal-{_dead_pid()}-0.events"
        killed = Spool(tmp_path / "scratch", max_bytes=1 << 20)
        for i in range(5, 12):
            killed.log(_event(i))
        killed.close()
        next((tmp_path / "scratch").glob("wal-*")).rename(wal)
        events_read, events_write = os.pipe()
        os.close(events_write)  # end-of-file at once: only the start-up is run
        reports_read, reports_write = os.pipe()
        settings = _settings(spool_dir=str(spool_dir))
        sink = FileSink(tmp_path / "sink.jsonl")
        with capture_logs() as logs:
            SenderProcess(settings, sink, events_read, reports_write).run()
        os.close(reports_write)
        recovered = [line for line in logs if line["event"] == "spool_recovered"]
        assert len(recovered) == 1
        line = recovered[0]
        assert line["log_level"] == "warning"
        assert (line["orphan_files"], line["orphan_events"]) == (1, 7)
        assert (line["pending_files"], line["pending_events"]) == (2, 12)
        assert line["pending_bytes"] == sum(p.stat().st_size for p in spool_dir.glob("spool-*"))
        assert not list(spool_dir.glob("wal-*"))
        reports = _reports(reports_read)
        assert reports[-1]["final"] is True
        assert reports[-1]["recovered"] == 7
        assert reports[-1]["spool_files"] == 2

    def test_clean_spool_reports_nothing(self, tmp_path: Path) -> None:
        """An empty spool at start: no spool_recovered line, nothing recovered."""
        events_read, events_write = os.pipe()
        os.close(events_write)
        reports_read, reports_write = os.pipe()
        settings = _settings(spool_dir=str(tmp_path / "spool"))
        with capture_logs() as logs:
            SenderProcess(
                settings, FileSink(tmp_path / "sink.jsonl"), events_read, reports_write
            ).run()
        os.close(reports_write)
        assert [line for line in logs if line["event"] == "spool_recovered"] == []
        assert _reports(reports_read)[-1]["recovered"] == 0


def _reports(fd: int) -> list[dict[str, Any]]:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    os.close(fd)
    messages = [decode(payload) for payload in FrameReader().feed(data)]
    return [m for m in messages if isinstance(m, dict)]
