"""Unit tests for offpath.emitter.spool (files on a temporary directory) and for the
sender process using it: events that cannot be sent are kept and sent later, a dead
sender's write-ahead log is adopted by its successor, damage is skipped and counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from offpath.emitter.process import ProcessEmitter
from offpath.emitter.record import EventRecord
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.spool import Spool, read_file
from offpath.kit.settings import SettingsError
from offpath.testing.sinks import read_batches, sink_arg
from offpath.testing.waits import eventually
from offpath.v1 import analytics_pb2

SINK = "offpath.testing.sinks:file_sink"
START_S = 20.0


def _event(i: int) -> analytics_pb2.AnalyticsEvent:
    return analytics_pb2.AnalyticsEvent(event_id=f"event-{i:06d}", query=f"q{i}")


def _record(i: int) -> EventRecord:
    return EventRecord(f"event-{i:06d}", 1_790_000_000_000_000_000, "s", "/s/M", query=f"q{i}")


def _settings(spool: Path, **overrides: object) -> EmitterSettings:
    base: dict[str, object] = {
        "queue_name": "events.fifo",
        "producer_id": "p",
        "linger_s": 0.05,
        "retry_deadline_s": 1.0,
        "spool_dir": str(spool),
    }
    base.update(overrides)
    return EmitterSettings(**base)  # type: ignore[arg-type]


def _sent(path: Path) -> set[str]:
    return {event_id for batch in read_batches(path) for event_id in batch}


class TestSpoolFiles:
    def test_parked_events_read_back_in_order(self, tmp_path: Path) -> None:
        """Events parked in one file come back whole and in order, oldest file first."""
        spool = Spool(tmp_path, max_bytes=1 << 20)
        assert spool.park([_event(i) for i in range(3)]) == (3, 0)
        assert spool.park([_event(9)]) == (1, 0)
        first = spool.oldest()
        assert first is not None
        back = spool.take(first)
        assert [e.event_id for e in back.events] == [f"event-{i:06d}" for i in range(3)]
        assert not back.corrupt
        spool.done(first)
        second = spool.oldest()
        assert second is not None
        assert [e.event_id for e in spool.take(second).events] == ["event-000009"]

    def test_bound_refuses_what_does_not_fit(self, tmp_path: Path) -> None:
        """Past max_bytes (all files together) events are refused, not written."""
        spool = Spool(tmp_path, max_bytes=100)
        parked, refused = spool.park([_event(i) for i in range(20)])
        assert parked > 0
        assert refused == 20 - parked
        assert spool.size() <= 100

    def test_damaged_file_keeps_its_clean_part_and_is_set_aside(self, tmp_path: Path) -> None:
        """A flipped byte ends the read at the damage; the file is renamed .corrupt and
        never offered again."""
        spool = Spool(tmp_path, max_bytes=1 << 20)
        spool.park([_event(i) for i in range(4)])
        path = spool.oldest()
        assert path is not None
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # inside the last record
        path.write_bytes(bytes(data))
        back = spool.take(path)
        assert back.corrupt
        assert [e.event_id for e in back.events] == [f"event-{i:06d}" for i in range(3)]
        assert spool.oldest() is None
        assert list(tmp_path.glob("*.corrupt"))

    def test_truncated_file_reads_to_the_tear(self, tmp_path: Path) -> None:
        """A file cut short (a crash mid-write) yields the records before the cut."""
        spool = Spool(tmp_path, max_bytes=1 << 20)
        spool.park([_event(i) for i in range(3)])
        path = spool.oldest()
        assert path is not None
        path.write_bytes(path.read_bytes()[:-5])
        back = read_file(path)
        assert back.corrupt
        assert len(back.events) == 2

    def test_wal_of_a_dead_sender_is_adopted_and_a_live_ones_is_not(self, tmp_path: Path) -> None:
        """recover turns the WAL of a process that is gone into a spool file and
        leaves the WAL of a running one alone."""
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        dead = tmp_path / f"wal-{child.pid}-0.events"
        alive = tmp_path / f"wal-{os.getppid()}-0.events"
        for path in (dead, alive):
            writer = Spool(tmp_path, max_bytes=1 << 20)
            writer.log(_event(1))
            writer.sync(force=True)
            writer.close()
            (tmp_path / f"wal-{os.getpid()}-0.events").rename(path)
        spool = Spool(tmp_path, max_bytes=1 << 20)
        assert spool.recover().orphan_events == 1
        assert not dead.exists()
        assert alive.exists()
        assert spool.oldest() is not None

    def test_batch_done_removes_the_wal(self, tmp_path: Path) -> None:
        """Once a batch is accounted for, its write-ahead log is gone."""
        spool = Spool(tmp_path, max_bytes=1 << 20)
        spool.log(_event(1))
        spool.sync(force=True)
        assert list(tmp_path.glob("wal-*"))
        spool.batch_done()
        assert not list(tmp_path.glob("wal-*"))


class TestSenderWithSpool:
    async def test_unsendable_events_are_spooled_then_replayed_by_the_next_start(
        self, tmp_path: Path
    ) -> None:
        """With the backend down, events are kept on disk (spooled, not dropped); the
        next process's sender, with the backend back, sends them (replayed)."""
        spool, out = tmp_path / "spool", tmp_path / "sink.jsonl"
        down = ProcessEmitter(
            _settings(spool), sink_factory=SINK, sink_arg=sink_arg(out, down=True)
        )
        down.start()
        assert await down.prepare(START_S)
        for i in range(30):
            down.emit(_record(i))
        stats = await down.shutdown(10)
        assert stats.spooled == 30
        assert stats.sent == 0
        assert stats.dropped == {}
        assert _sent(out) == set()
        up = ProcessEmitter(_settings(spool), sink_factory=SINK, sink_arg=sink_arg(out))
        up.start()
        assert await up.prepare(START_S)
        await eventually(lambda: up.stats.replayed == 30, START_S)
        again = await up.shutdown(10)
        assert again.replayed == 30
        assert _sent(out) == {f"event-{i:06d}" for i in range(30)}
        assert not list(spool.glob("*.events"))

    @pytest.mark.parametrize("reported", [True, False], ids=["reported", "unreported"])
    async def test_dead_senders_wal_is_sent_by_its_successor(
        self, tmp_path: Path, reported: bool
    ) -> None:
        """A sender killed while holding a batch leaves its WAL; the restarted sender
        adopts and sends it, so nothing it had read is lost. Whether or not the dead one
        had told the serving process it read them, the books place every event
        (spooled, then replayed): none lost, none left in the pipe."""
        spool, out = tmp_path / "spool", tmp_path / "sink.jsonl"
        emitter = ProcessEmitter(
            _settings(spool, linger_s=60.0), sink_factory=SINK, sink_arg=sink_arg(out)
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            for i in range(40):
                emitter.emit(_record(i))
            # Killed once the events are in its WAL: "reported" waits until its
            # report of having read them has reached the serving process too.
            await eventually(lambda: _wal_events(spool) == 40, 10)
            if reported:
                await eventually(lambda: _reported_received(emitter) == 40, 10)
            first = emitter.sender_pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await eventually(lambda: emitter.sender_pid not in (None, first), START_S)
            await eventually(lambda: emitter.stats.replayed == 40, START_S)
            # The successor said what it found: 40 events in its predecessor's WAL.
            assert emitter.stats.recovered == 40
            await eventually(lambda: emitter.pending == 0, START_S)
        finally:
            stats = await emitter.shutdown(10)
        assert _sent(out) == {f"event-{i:06d}" for i in range(40)}
        assert stats.dropped == Counter()
        assert stats.enqueued == 40
        assert stats.sent + stats.spooled == 40
        assert stats.replayed == 40

    def test_spool_needs_the_process_sender(self, tmp_path: Path) -> None:
        """A spool with the thread sender is refused at start-up, naming both settings."""
        with pytest.raises(SettingsError, match="OFFPATH_EMIT_SPOOL_DIR"):
            EmitterSettings.from_env(
                {"OFFPATH_EMIT_SPOOL_DIR": str(tmp_path), "OFFPATH_EMIT_SENDER": "thread"}
            )

    async def test_unwritable_spool_is_a_start_up_error(self, tmp_path: Path) -> None:
        """A spool directory that cannot be made is reported by start(), not by a
        sender dying at every start."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        emitter = ProcessEmitter(_settings(blocker / "spool"), sink_factory=SINK)
        with pytest.raises(SettingsError, match="OFFPATH_EMIT_SPOOL_DIR"):
            emitter.start()


def _reported_received(emitter: ProcessEmitter) -> int:
    """What the live sender has told the serving process it read."""
    sender = emitter._sender
    return sender.tally.received if sender is not None else 0


def _wal_events(spool: Path) -> int:
    return sum(len(read_file(path).events) for path in spool.glob("wal-*"))
