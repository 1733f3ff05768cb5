"""The emitter with a sender process: events leave the serving process's
memory when they are emitted.

``emit`` encodes the record (marshal, ≈ 1 µs) and writes the frame to a
non-blocking pipe read by a sender process of its own (:mod:`.child`). What
is in the pipe belongs to the kernel: a ``kill -9`` of the serving process
right after a reply loses nothing that was emitted before it, because the
sender reads the pipe to its end and sends everything. The protobuf, the
batching and the AWS calls happen in the sender, on another core when the
host has one (the sender is moved off the cores the serving process may
use), so the serving core pays for the encode and the ``write`` only.

When the pipe is full (the sender fell behind), frames wait in an in-process
backlog, written as the pipe drains; that backlog is bounded and, unlike the
pipe, lost on a crash. The serving process keeps the pipe's read end open,
so a sender that dies is restarted on the same pipe and nothing in it is
lost; what the dead sender had read but not sent is counted as
``sender_lost``. The sender's counters come back on a second pipe (after
every send and, while a send retries through an outage, every second), so
the serving process's stats still add up and move during an outage: every
event emitted is enqueued or dropped, and every enqueued one is sent,
dropped under a reason, spooled, or buffered (backlog, pipe, or sender). At
shutdown, one ``events_lost`` log line gives every loss by reason.

Everything in this class runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from offpath.emitter.emitter import EmitterLifecycle, EmitterStats
from offpath.emitter.frames import FrameError, FrameReader, control_frame, decode, record_frame
from offpath.emitter.record import EventRecord
from offpath.emitter.settings import ENV_SPOOL_DIR, EmitterSettings
from offpath.emitter.sink import CallLatencies
from offpath.kit.backoff import Backoff
from offpath.kit.settings import SettingsError

log = structlog.get_logger("offpath.emitter")

DEFAULT_SINK: Final = "offpath.emitter.sqs:SqsSink"
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
_PIPE_SIZE: Final = 1 << 20
# Restarting a sender that keeps dying: up to 0.5 s, doubling to 30 s.
_RESTART_BACKOFF: Final = Backoff(0.5, 30.0)
# How long a sender may take to exit after its drain deadline before it is killed.
_EXIT_MARGIN_S: Final = 2.0


@dataclass
class _Tally:
    """A sender's cumulative counters, as it reported them."""

    received: int = 0
    sent: int = 0
    requests: int = 0
    retries: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    spooled: int = 0
    replayed: int = 0
    recovered: int = 0
    latencies: CallLatencies = field(default_factory=CallLatencies)
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Tally) -> None:
        self.received += other.received
        self.sent += other.sent
        self.requests += other.requests
        self.retries += other.retries
        self.dropped.update(other.dropped)
        self.spooled += other.spooled
        self.replayed += other.replayed
        self.recovered += other.recovered
        self.latencies.add(other.latencies)
        self.outcomes.update(other.outcomes)


@dataclass
class _SenderState:
    """One sender process and what it last reported."""

    process: subprocess.Popen[bytes]
    reports_fd: int
    ready: asyncio.Future[str | None]
    exited: asyncio.Future[None]
    reader: FrameReader = field(default_factory=FrameReader)
    tally: _Tally = field(default_factory=_Tally)
    buffered: int = 0
    # Gauges of the live sender: events waiting for an SQS retry, and what
    # its spool holds for replay (files, bytes).
    retrying: int = 0
    spool_files: int = 0
    spool_bytes: int = 0
    finished: bool = False  # it sent its final report: it read the pipe to the end
    # Started after a sender of ours died: the dead one's WAL is among what it
    # recovers (see ProcessEmitter._place_recovered).
    restart: bool = False
    recovery_placed: bool = False


def _set_pipe_size(fd: int) -> int:
    """As large a pipe as the host allows (up to 1 MiB): room for several
    thousand events while the sender is busy."""
    size = _PIPE_SIZE
    while size >= 65536:
        try:
            return int(fcntl.fcntl(fd, _F_SETPIPE_SZ, size))
        except OSError:
            size //= 2
    return 65536


def _other_cores() -> set[int] | None:
    """Cores the serving process may not run on, when there are any."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    others = set(range(os.cpu_count() or 1)) - mine
    return others or None


class ProcessEmitter(EmitterLifecycle):
    """Fire-and-forget delivery through a sender process (see the module docstring)."""

    def __init__(
        self,
        settings: EmitterSettings,
        *,
        sink_factory: str = DEFAULT_SINK,
        sink_arg: str | None = None,
        service: str = "emitter",
        log_level: str = "info",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sink_factory = sink_factory
        self._sink_arg = sink_arg
        self._service = service
        self._log_level = log_level
        self._clock = clock
        self._write_fd = -1
        self._read_fd = -1
        self._backlog: deque[bytes] = deque()
        self._backlog_empty = asyncio.Event()
        self._writer_armed = False
        self._stopping = False
        # Our own counters; each sender's are in its _SenderState, and those
        # of senders that ended are summed in _ended.
        self._enqueued = 0
        self._written = 0
        self._dropped: Counter[str] = Counter()
        self._ended = _Tally()
        self._sender: _SenderState | None = None
        self._restarts = 0
        # With a spool: events of dead senders placed as spooled (their WAL
        # holds them and the next sender replays it), by when they were
        # placed: at the death (what it had said it read), and at the next
        # sender's recovery report (what it read after its last report);
        # ``_wal_unmatched`` is the first kind not yet met by a recovery.
        self._wal_placed = 0
        self._wal_unmatched = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawn: asyncio.TimerHandle | None = None
        self._flush_seq = 0
        self._flushes: dict[int, asyncio.Future[None]] = {}
        self._shutdown_done = None
        self._loop_slice_max_ns = 0
        self._reported_drops = Counter()

    # -- the request path -------------------------------------------------

    def emit(self, record: EventRecord) -> bool:
        """Hand ``record`` to the sender. O(1); never blocks, never raises.

        Returns False when it was dropped (backlog full, or shutting down);
        the drop is counted either way.
        """
        if self._stopping:
            self._dropped["shutdown"] += 1
            return False
        try:
            frame = record_frame(record)
        except (TypeError, ValueError):
            # A field marshal cannot carry (not str/int/float...): the
            # caller's bug, counted, never raised into the RPC.
            self._dropped["unencodable"] += 1
            return False
        if not self._backlog:
            try:
                written = os.write(self._write_fd, frame)
            except OSError:  # BlockingIOError: the pipe is full
                written = 0
            if written == len(frame):
                self._enqueued += 1
                self._written += 1
                return True
            if written:
                # Only a frame over PIPE_BUF can be cut; its rest goes first.
                self._enqueued += 1
                self._backlog.append(frame[written:])
                self._arm_writer()
                return True
        if len(self._backlog) >= self._settings.max_queue_size:
            # Newest is dropped: what waits is older and closer to being sent.
            self._dropped["queue_full"] += 1
            return False
        self._enqueued += 1
        self._backlog.append(frame)
        self._arm_writer()
        return True

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Make the pipe and start the sender process. Call once, on the
        running loop, best before the gRPC server starts (no fork happens:
        the sender is a fresh interpreter)."""
        if self._loop is not None:
            raise RuntimeError("emitter already started")
        self._check_spool()
        self._loop = asyncio.get_running_loop()
        self._read_fd, self._write_fd = os.pipe()
        pipe_size = _set_pipe_size(self._write_fd)
        os.set_blocking(self._write_fd, False)
        self._spawn()
        log.info(
            "emitter_started",
            **{**self._settings.describe(), "sender": "process"},
            pipe_bytes=pipe_size,
        )

    async def prepare(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, for the sender to be up with its
        sink prepared (client made, queue looked up). False, logged, when it
        was not: sending still retries by itself."""
        sender = self._sender
        if sender is None:
            raise RuntimeError("emitter not started")
        try:
            error = await asyncio.wait_for(asyncio.shield(sender.ready), timeout)
        except (TimeoutError, RuntimeError) as exc:
            log.warning("emitter_warm_up_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        if error is not None:
            log.warning("emitter_warm_up_failed", error=error)
            return False
        return True

    def _tally(self) -> _Tally:
        """Every sender's counters, the live one's and those that ended."""
        total = _Tally()
        total.add(self._ended)
        if self._sender is not None:
            total.add(self._sender.tally)
        total.received += self._wal_placed
        total.spooled += self._wal_placed
        return total

    @property
    def stats(self) -> EmitterStats:
        """A snapshot of the counters, the sender's included."""
        tally = self._tally()
        dropped = Counter(self._dropped)
        dropped.update(tally.dropped)
        sender = self._sender
        return EmitterStats(
            enqueued=self._enqueued,
            sent=tally.sent,
            requests=tally.requests,
            retries=tally.retries,
            dropped=dropped,
            spooled=tally.spooled,
            replayed=tally.replayed,
            latencies=tally.latencies,
            outcomes=tally.outcomes,
            recovered=tally.recovered,
            retrying=sender.retrying if sender is not None else 0,
            spool_files=sender.spool_files if sender is not None else 0,
            spool_bytes=sender.spool_bytes if sender is not None else 0,
        )

    @property
    def pending(self) -> int:
        """Events in the backlog, the pipe, or the sender's hands."""
        in_pipe = self._written - self._tally().received
        held = self._sender.buffered if self._sender is not None else 0
        return len(self._backlog) + in_pipe + held

    @property
    def sender_pid(self) -> int | None:
        return self._sender.process.pid if self._sender else None

    async def force_flush(self, timeout: float | None = None) -> None:
        """Ask the sender to send what it holds now, and wait until it has
        (everything emitted before the call included), at most ``timeout``
        seconds (default: the retry deadline plus a little)."""
        loop = self._running_loop()
        if timeout is None:
            timeout = self._settings.retry_deadline_s + _EXIT_MARGIN_S
        await self._wait_backlog_written(self._clock() + timeout)
        self._flush_seq += 1
        seq = self._flush_seq
        done: asyncio.Future[None] = loop.create_future()
        self._flushes[seq] = done
        await self._write_control({"flush": seq}, self._clock() + timeout)
        try:
            await asyncio.wait_for(done, timeout)
        finally:
            self._flushes.pop(seq, None)

    async def _shutdown(self, timeout: float) -> None:
        """Shutdown: hand the backlog to the sender, close the pipe, and wait
        for the sender to send everything and exit, within ``timeout``; what
        is still unsent then is counted as ``shutdown_unsent``."""
        self._stopping = True
        deadline = self._clock() + timeout
        if self._loop is None:
            self._dropped["shutdown_unsent"] += len(self._backlog)
            self._backlog.clear()
            self._report_lost()
            log.info("emitter_stopped", sender="process", **self.stats.as_dict())
            return
        if self._respawn is not None:
            # A sender was due to restart: start it now, it must drain the pipe.
            self._respawn.cancel()
            self._respawn = None
            self._spawn()
        await self._wait_backlog_written(deadline)
        unwritten = len(self._backlog)
        self._backlog.clear()
        self._disarm_writer()
        # The sender's own deadline: what is left of ours.
        await self._write_control({"drain_s": max(0.0, deadline - self._clock())}, deadline)
        os.close(self._write_fd)  # end-of-file for the sender, after what the pipe holds
        self._write_fd = -1
        sender = self._sender
        if sender is not None:
            left = max(0.0, deadline - self._clock()) + _EXIT_MARGIN_S
            try:
                await asyncio.wait_for(asyncio.shield(sender.exited), left)
            except TimeoutError:
                log.warning("emitter_sender_kill", pid=sender.process.pid, timeout_s=timeout)
                sender.process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sender.exited), _EXIT_MARGIN_S)
        # Whatever the books cannot place now: when the last sender read the
        # pipe to its end, it was read by a sender that died before it said
        # so; otherwise it was not confirmed in time.
        stats = self.stats
        placed = stats.sent + sum(stats.dropped.values()) + stats.spooled
        unplaced = max(0, stats.enqueued - placed - unwritten)
        if unplaced and sender is not None and sender.finished:
            self._dropped["sender_lost"] += unplaced
            unplaced = 0
        unsent = unwritten + unplaced
        if unsent:
            self._dropped["shutdown_unsent"] += unsent
            log.warning("emitter_drain_timeout", unsent=unsent, timeout_s=timeout)
        os.close(self._read_fd)
        self._read_fd = -1
        self._report_drops()
        self._report_lost()
        log.info(
            "emitter_stopped",
            sender="process",
            loop_slice_max_us=round(self._loop_slice_max_ns / 1000, 1),
            sender_pid=sender.process.pid if sender else None,
            sender_restarts=self._restarts,
            **self.stats.as_dict(),
        )

    def _check_spool(self) -> None:
        """A spool directory we cannot write is a start-up error, not a
        sender that dies at every start."""
        directory = self._settings.spool_dir
        if directory is None:
            return
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"{ENV_SPOOL_DIR}={directory!r}: {exc}") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise SettingsError(f"{ENV_SPOOL_DIR}={directory!r} is not writable")

    # -- the sender process ---------------------------------------------------

    def _spawn(self) -> None:
        loop = self._running_loop()
        reports_read, reports_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "offpath.emitter.child",
            "--events-fd",
            str(self._read_fd),
            "--reports-fd",
            str(reports_write),
            "--settings",
            self._settings.to_json(),
            "--sink",
            self._sink_factory,
            "--service",
            self._service,
            "--log-level",
            self._log_level,
        ]
        if self._sink_arg is not None:
            command += ["--sink-arg", self._sink_arg]
        process = subprocess.Popen(
            command,
            pass_fds=(self._read_fd, reports_write),
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C for our terminal must not cut its drain short.
            start_new_session=True,
        )
        os.close(reports_write)
        others = _other_cores()
        if others is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(process.pid, others)
        state = _SenderState(
            process=process,
            reports_fd=reports_read,
            ready=loop.create_future(),
            exited=loop.create_future(),
            restart=self._restarts > 0,
        )
        self._sender = state
        loop.add_reader(reports_read, self._on_reports, state)

    def _on_reports(self, state: _SenderState) -> None:
        started = time.perf_counter_ns()
        try:
            data = os.read(state.reports_fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            self._sender_ended(state)
            return
        try:
            for payload in state.reader.feed(data):
                message = decode(payload)
                if isinstance(message, dict):
                    self._apply_report(state, message)
        except FrameError as exc:
            log.error("emitter_report_corrupt", error=str(exc))
        self._report_drops()
        self._note_slice(started)

    def _apply_report(self, state: _SenderState, report: dict[str, Any]) -> None:
        state.tally = _Tally(
            received=int(report.get("received", 0)),
            sent=int(report.get("sent", 0)),
            requests=int(report.get("requests", 0)),
            retries=int(report.get("retries", 0)),
            dropped=Counter(report.get("dropped", {})),
            spooled=int(report.get("spooled", 0)),
            replayed=int(report.get("replayed", 0)),
            recovered=int(report.get("recovered", 0)),
            latencies=CallLatencies.from_dict(report.get("latencies")),
            outcomes=Counter(report.get("outcomes", {})),
        )
        state.buffered = int(report.get("buffered", 0))
        state.retrying = int(report.get("retrying", 0))
        state.spool_files = int(report.get("spool_files", 0))
        state.spool_bytes = int(report.get("spool_bytes", 0))
        if state.restart and not state.recovery_placed and report.get("ready"):
            state.recovery_placed = True
            self._place_recovered(state.tally.recovered)
        if report.get("final"):
            state.finished = True
        if report.get("ready") and not state.ready.done():
            state.ready.set_result(report.get("prepare_error"))
        flushed = report.get("flushed")
        if flushed is not None:
            for seq, future in list(self._flushes.items()):
                if seq <= int(flushed) and not future.done():
                    future.set_result(None)

    def _place_recovered(self, recovered: int) -> None:
        """A sender started after one of ours died recovered ``recovered``
        events from dead senders' WALs. Beyond those already placed at the
        death, they are what the dead sender read after its last report: the
        books still count them in the pipe. Placed now as spooled (the new
        sender replays them), at most as many as the books have in the pipe
        (a WAL of another process's sender sharing the directory is not
        ours to count)."""
        extra = max(0, recovered - self._wal_unmatched)
        self._wal_unmatched = 0
        tally = self._tally()
        in_pipe = self._written - tally.received
        placed = min(extra, max(0, in_pipe))
        if placed:
            self._wal_placed += placed
            log.info("emitter_wal_recovered", events=placed)

    def _sender_ended(self, state: _SenderState) -> None:
        loop = self._running_loop()
        loop.remove_reader(state.reports_fd)
        os.close(state.reports_fd)
        code = state.process.wait()
        tally = state.tally
        # What it read and never confirmed: with a spool it is in the dead
        # sender's WAL, which the next sender adopts and replays; without
        # one it died with it.
        lost = tally.received - tally.sent - sum(tally.dropped.values()) - tally.spooled
        if lost > 0:
            if self._settings.spool_dir is not None:
                tally.spooled += lost
                self._wal_unmatched += lost
            else:
                tally.dropped["sender_lost"] += lost
        self._ended.add(tally)
        state.tally, state.buffered, state.retrying = _Tally(), 0, 0
        if not state.ready.done():
            state.ready.set_exception(RuntimeError(f"sender exited with code {code}"))
        if not state.exited.done():
            state.exited.set_result(None)
        if self._stopping:
            return
        self._restarts += 1
        delay = _RESTART_BACKOFF.delay(min(self._restarts, 10))
        log.error("emitter_sender_died", code=code, lost=max(lost, 0), restart_in_s=round(delay, 2))
        self._respawn = loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._respawn = None
        if not self._stopping:
            self._spawn()

    # -- the pipe -----------------------------------------------------------------

    def _arm_writer(self) -> None:
        self._backlog_empty.clear()
        if not self._writer_armed and self._loop is not None and self._write_fd >= 0:
            self._loop.add_writer(self._write_fd, self._drain_backlog)
            self._writer_armed = True

    def _disarm_writer(self) -> None:
        if self._writer_armed and self._loop is not None:
            self._loop.remove_writer(self._write_fd)
            self._writer_armed = False

    def _drain_backlog(self) -> None:
        """Write waiting frames while the pipe takes them (called when writable)."""
        started = time.perf_counter_ns()
        backlog = self._backlog
        while backlog:
            frame = backlog[0]
            try:
                written = os.write(self._write_fd, frame)
            except BlockingIOError:
                break
            except OSError as exc:
                log.error("emitter_pipe_failed", error=str(exc))
                break
            if written < len(frame):
                backlog[0] = frame[written:]
                break
            backlog.popleft()
            self._written += 1
            # Bound the time taken from the loop in one go.
            if time.perf_counter_ns() - started > 200_000:
                break
        if not backlog:
            self._disarm_writer()
            self._backlog_empty.set()
        self._note_slice(started)

    async def _wait_backlog_written(self, deadline: float) -> None:
        if not self._backlog:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._backlog_empty.wait(), max(0.0, deadline - self._clock()))

    async def _write_control(self, message: dict[str, Any], deadline: float) -> bool:
        """Write a control frame after the backlog (it is small, so the write
        is atomic; when the pipe is full, wait for room until ``deadline``)."""
        frame = control_frame(message)
        while True:
            if not self._backlog:
                try:
                    os.write(self._write_fd, frame)
                    return True
                except BlockingIOError:
                    pass
            if self._clock() >= deadline:
                log.warning("emitter_control_not_sent", message=message)
                return False
            await asyncio.sleep(0.005)

    # -- bookkeeping ---------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("emitter not started")
        return self._loop

    def _note_slice(self, started_ns: int) -> None:
        self._loop_slice_max_ns = max(self._loop_slice_max_ns, time.perf_counter_ns() - started_ns)
