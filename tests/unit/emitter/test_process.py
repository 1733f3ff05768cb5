"""Unit tests for offpath.emitter.process.ProcessEmitter and its sender process
(offpath.emitter.child): real child processes and pipes, a sink that writes what it
receives to a file (offpath.testing.sinks), no AWS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from offpath.emitter.frames import FrameReader, control_frame, decode, record_frame
from offpath.emitter.process import ProcessEmitter
from offpath.emitter.record import EventRecord
from offpath.emitter.settings import EmitterSettings
from offpath.testing.sinks import read_batches, sink_arg
from offpath.testing.waits import eventually

SINK = "offpath.testing.sinks:file_sink"
START_S = 20.0  # a fresh interpreter importing boto3: generous on a busy machine


def _settings(**overrides: object) -> EmitterSettings:
    base: dict[str, object] = {
        "queue_name": "events.fifo",
        "producer_id": "producer-1",
        "linger_s": 0.05,
        "drain_timeout_s": 10.0,
    }
    base.update(overrides)
    return EmitterSettings(**base)  # type: ignore[arg-type]


def _record(i: int) -> EventRecord:
    return EventRecord(
        event_id=f"event-{i:06d}",
        occurred_at_ns=1_790_000_000_000_000_000 + i,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=f"query {i}",
        matched_skills=(("Kubernetes", 0.5),),
        processing_ns=250_000,
        model="template-v1",
        token_count=7,
    )


def _delivered(path: Path) -> list[str]:
    return [event_id for batch in read_batches(path) for event_id in batch]


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[ProcessEmitter, Path]]:
    """A started ProcessEmitter writing to a file sink; shut down afterwards."""
    out = tmp_path / "sink.jsonl"
    emitter = ProcessEmitter(_settings(), sink_factory=SINK, sink_arg=sink_arg(out))
    emitter.start()
    try:
        assert await emitter.prepare(START_S)
        yield emitter, out
    finally:
        await emitter.shutdown(10)


class TestFrames:
    def test_record_round_trip(self) -> None:
        """A record framed and read back in pieces of any size is the same record."""
        record = EventRecord(
            event_id="e-1",
            occurred_at_ns=5,
            service="s",
            method="/s/M",
            query="q ü",
            matched_skills=(("Go", 0.25),),
            processing_ns=9,
            model="m",
            token_count=3,
            status_code=3,
            attributes={"tenant": "a"},
        )
        data = record_frame(record) + control_frame({"flush": 1})
        reader = FrameReader()
        payloads = [p for i in range(len(data)) for p in reader.feed(data[i : i + 1])]
        assert [decode(p) for p in payloads] == [record, {"flush": 1}]
        assert reader.partial == 0

    def test_torn_frame_is_held_back(self) -> None:
        """An unfinished frame yields nothing and is reported as partial bytes."""
        frame = record_frame(_record(1))
        reader = FrameReader()
        assert list(reader.feed(frame[:-3])) == []
        assert reader.partial == len(frame) - 3


class TestDelivery:
    async def test_every_event_arrives_once_and_the_books_balance(
        self, started: tuple[ProcessEmitter, Path]
    ) -> None:
        """Events emitted reach the sink exactly once, in batches, and after shutdown
        enqueued = sent with nothing dropped or pending."""
        emitter, out = started
        for i in range(500):
            assert emitter.emit(_record(i))
        stats = await emitter.shutdown(10)
        assert sorted(_delivered(out)) == [f"event-{i:06d}" for i in range(500)]
        assert stats.enqueued == stats.sent == 500
        assert stats.dropped == {}
        assert emitter.pending == 0
        assert len(read_batches(out)) < 50

    async def test_force_flush_sends_before_the_linger(self, tmp_path: Path) -> None:
        """force_flush returns once everything emitted before it was handed to the sink."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(linger_s=30.0), sink_factory=SINK, sink_arg=sink_arg(out)
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            for i in range(7):
                emitter.emit(_record(i))
            await emitter.force_flush(START_S)
            assert len(_delivered(out)) == 7
            assert emitter.stats.sent == 7
        finally:
            await emitter.shutdown(10)

    async def test_sender_runs_in_another_process(
        self, started: tuple[ProcessEmitter, Path]
    ) -> None:
        """The sink is called in the sender's process, not the serving one."""
        emitter, out = started
        emitter.emit(_record(1))
        await emitter.force_flush(START_S)
        assert emitter.sender_pid not in (None, os.getpid())
        assert '"kind": "batch"' in out.read_text()
        assert f'"pid": {emitter.sender_pid}' in out.read_text()

    async def test_prepare_failure_is_reported_not_raised(self, tmp_path: Path) -> None:
        """A sink whose warm-up fails makes prepare() return False; events still go."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(), sink_factory=SINK, sink_arg=sink_arg(out, fail_prepare=True)
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S) is False
            emitter.emit(_record(1))
        finally:
            stats = await emitter.shutdown(10)
        assert stats.sent == 1


class TestBackpressure:
    async def test_backlog_absorbs_a_slow_sender_then_drains(self, tmp_path: Path) -> None:
        """When the pipe is full, frames wait in the backlog and are written as the
        sender catches up; none is lost."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(linger_s=0.01, events_per_message=10),
            sink_factory=SINK,
            sink_arg=sink_arg(out, delay_s=0.05),
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            big = "x" * 3000  # fills a 1 MiB pipe in a few hundred events
            for i in range(1500):
                assert emitter.emit(
                    EventRecord(
                        event_id=f"event-{i:06d}",
                        occurred_at_ns=1,
                        service="s",
                        method="/s/M",
                        query=big,
                    )
                )
            assert emitter.pending > 0
        finally:
            stats = await emitter.shutdown(60)
        assert stats.sent == 1500, stats.as_dict()
        assert len(set(_delivered(out))) == 1500

    async def test_full_backlog_drops_newest_and_counts(self, tmp_path: Path) -> None:
        """With the pipe full and the backlog at its bound, emit returns False and the
        drop is counted as queue_full; enqueued + queue_full = emitted."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(max_queue_size=5, linger_s=60.0),
            sink_factory=SINK,
            sink_arg=sink_arg(out, delay_s=5.0),
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            big = "y" * 3500
            results = [
                emitter.emit(
                    EventRecord(
                        event_id=f"e-{i}", occurred_at_ns=1, service="s", method="/s/M", query=big
                    )
                )
                for i in range(2000)
            ]
            stats = emitter.stats
            assert results.count(False) == stats.dropped["queue_full"] > 0
            assert stats.enqueued + stats.dropped["queue_full"] == 2000
        finally:
            await emitter.shutdown(1)


class TestCrashes:
    def test_kill_9_of_the_serving_process_loses_nothing_emitted(self, tmp_path: Path) -> None:
        """A serving process killed with SIGKILL right after emitting: its sender reads
        the pipe to the end and delivers every event."""
        out = tmp_path / "sink.jsonl"
        script = textwrap.dedent(
            f"""
            import asyncio, os, signal
            from offpath.emitter.process import ProcessEmitter
            from offpath.emitter.settings import EmitterSettings
            from offpath.emitter.record import EventRecord

            async def main():
                settings = EmitterSettings(queue_name="q.fifo", producer_id="p", linger_s=5.0)
                emitter = ProcessEmitter(
                    settings, sink_factory={SINK!r}, sink_arg={sink_arg(out)!r},
                    log_level="warning",
                )
                emitter.start()
                await emitter.prepare({START_S})
                for i in range(2000):
                    assert emitter.emit(EventRecord(f"e-{{i}}", 1, "s", "/s/M", query="q"))
                    if i % 250 == 0:
                        await asyncio.sleep(0)
                print(emitter.pending, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

            asyncio.run(main())
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert int(done.stdout.split()[-1]) > 0  # events were still pending at the kill
        deadline = time.monotonic() + 30
        while len(_delivered(out)) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = _delivered(out)
        assert sorted(delivered) == sorted(f"e-{i}" for i in range(2000))

    async def test_dead_sender_is_restarted_and_the_books_still_balance(
        self, tmp_path: Path
    ) -> None:
        """A sender killed with SIGKILL is replaced on the same pipe; what it had read
        but not sent is counted as sender_lost, everything else arrives, and
        sent + dropped = enqueued at the end."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(linger_s=30.0), sink_factory=SINK, sink_arg=sink_arg(out)
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            for i in range(100):
                emitter.emit(_record(i))
            await eventually(lambda: emitter.pending == 100 and emitter.stats.sent == 0, 10)
            first = emitter.sender_pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await eventually(lambda: emitter.sender_pid not in (None, first), START_S)
            for i in range(100, 150):
                emitter.emit(_record(i))
        finally:
            stats = await emitter.shutdown(20)
        delivered = set(_delivered(out))
        assert {f"event-{i:06d}" for i in range(100, 150)} <= delivered
        assert stats.sent == len(delivered)
        assert stats.sent + sum(stats.dropped.values()) == stats.enqueued == 150
        assert stats.dropped["sender_lost"] == 150 - len(delivered)

    async def test_slow_backend_at_shutdown_is_counted_as_send_failed(self, tmp_path: Path) -> None:
        """A sink that cannot finish within the drain deadline gives the batch up
        there, and the sender's drop reason reaches the serving process's books."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(linger_s=30.0), sink_factory=SINK, sink_arg=sink_arg(out, delay_s=5.0)
        )
        emitter.start()
        assert await emitter.prepare(START_S)
        for i in range(20):
            emitter.emit(_record(i))
        started = time.monotonic()
        stats = await emitter.shutdown(0.5)
        assert time.monotonic() - started < 4.0
        assert stats.dropped == {"send_failed": 20}
        assert stats.sent == 0

    async def test_hung_sender_is_killed_and_its_events_counted(self, tmp_path: Path) -> None:
        """A sender stuck in a backend call past the drain deadline is killed, and what
        it did not confirm is counted as shutdown_unsent, never silently lost."""
        out = tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(linger_s=30.0),
            sink_factory=SINK,
            sink_arg=sink_arg(out, delay_s=30.0, ignore_deadline=True),
        )
        emitter.start()
        assert await emitter.prepare(START_S)
        for i in range(20):
            emitter.emit(_record(i))
        started = time.monotonic()
        stats = await emitter.shutdown(0.5)
        assert time.monotonic() - started < 10.0
        assert stats.dropped == {"shutdown_unsent": 20}
        assert stats.sent + sum(stats.dropped.values()) == stats.enqueued == 20


class TestPlacement:
    @pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
    async def test_sender_moves_off_the_serving_core(self, tmp_path: Path) -> None:
        """When the serving process is pinned to a core, its sender runs on the others."""
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})
        try:
            emitter = ProcessEmitter(
                _settings(), sink_factory=SINK, sink_arg=sink_arg(tmp_path / "s.jsonl")
            )
            emitter.start()
        finally:
            os.sched_setaffinity(0, before)
        try:
            pid = emitter.sender_pid
            assert pid is not None
            assert 0 not in os.sched_getaffinity(pid)
        finally:
            await emitter.shutdown(10)

    async def test_sender_ignores_the_terminals_ctrl_c(
        self, started: tuple[ProcessEmitter, Path]
    ) -> None:
        """The sender runs in its own session: a Ctrl-C to our process group is not
        delivered to it."""
        emitter, _ = started
        pid = emitter.sender_pid
        assert pid is not None
        assert os.getsid(pid) != os.getsid(0)
        await asyncio.sleep(0)
