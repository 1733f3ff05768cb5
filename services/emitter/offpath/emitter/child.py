"""The sender process: ``python -m offpath.emitter.child`` (started by
:class:`~offpath.emitter.process.ProcessEmitter`, never by hand).

It owns everything the serving process must not pay for: it reads record
frames from the events pipe, builds their protobuf as they arrive (so the
work comes in small pieces, not one burst a second), batches them by count
and linger time, and hands each batch to the sink (SQS by default). It
reports its counters on the reports pipe after every send and whenever
what it received changed (at most every ``_REPORT_EVERY_S``), so the
serving process can account for every event it handed over.

It ends at end-of-file on the events pipe: when the serving process closed
it at shutdown, or died. Either way it first sends what it holds, within the
drain deadline the serving process gave it (a ``drain_s`` control message)
or, when nobody gave one (the serving process was killed), within the
retry deadline: events handed over before a ``kill -9`` of the serving
process are still delivered. It runs in its own session, so a Ctrl-C meant
for the serving process's terminal does not cut it short.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import select
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from offpath.emitter.frames import FrameError, FrameReader, control_frame, decode
from offpath.emitter.record import EventRecord
from offpath.emitter.sender import Sender
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.sink import CallLatencies, EventSink, ExportResult
from offpath.emitter.spool import Spool
from offpath.kit.logs import configure_logging
from offpath.v1 import analytics_pb2

log = structlog.get_logger("offpath.emitter.child")

_READ_SIZE = 1 << 20
_LOWEST_PRIORITY = 19
# After a read that found events, wait this long before the next: wake-ups
# stay at most twenty a second whatever the request rate (the pipe holds the
# rest, thousands of events). A wake-up has a fixed cost, and not a small
# one: 50-140 µs of CPU for a bare timer wake-up on the 2-core VM this was
# measured on; at 10 ms the sender spent 20 ms of CPU a second at 200 req/s.
_COALESCE_S = 0.05
# Counters go back after every send; between sends, at most this often (each
# report costs the serving process a read on its event loop).
_REPORT_EVERY_S = 1.0


def load_sink_factory(spec: str) -> Callable[..., EventSink]:
    """``module:attribute`` → the callable that makes the sink."""
    module, _, attribute = spec.partition(":")
    if not module or not attribute:
        raise ValueError(f"sink factory {spec!r} is not module:attribute")
    factory: Callable[..., EventSink] = getattr(importlib.import_module(module), attribute)
    return factory


@dataclasses.dataclass
class _Counters:
    received: int = 0
    sent: int = 0
    requests: int = 0
    retries: int = 0
    dropped: Counter[str] = dataclasses.field(default_factory=Counter)
    # The spool's: events parked on disk, events adopted from dead senders'
    # WALs, events sent from the spool (enqueued by an earlier sender or
    # process, so outside this process's enqueued/sent/dropped), damaged
    # spool files, and spooled events given up on when replayed.
    spooled: int = 0
    recovered: int = 0
    replayed: int = 0
    replay_dropped: int = 0
    spool_corrupt: int = 0
    burst_max_ns: int = 0
    latencies: CallLatencies = dataclasses.field(default_factory=CallLatencies)

    def add(self, result: ExportResult) -> None:
        self.sent += result.sent
        self.requests += result.requests
        self.retries += result.retries
        self.dropped.update(result.dropped)
        self.latencies.add(result.latencies)


class SenderProcess:
    """The sender process's loop; ``run`` returns when the events pipe ends."""

    def __init__(
        self,
        settings: EmitterSettings,
        sink: EventSink,
        events_fd: int,
        reports_fd: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sender = Sender(sink, settings.producer_id)
        self._events_fd = events_fd
        self._reports_fd: int | None = reports_fd
        self._clock = clock
        self._counters = _Counters()
        self._batch: list[analytics_pb2.AnalyticsEvent] = []
        self._first_at = 0.0
        self._drain_deadline: float | None = None
        self._flush_requested: int | None = None
        self._reported_at = 0.0
        self._reported_received = -1
        self._spool = (
            Spool(Path(settings.spool_dir), max_bytes=settings.spool_max_bytes)
            if settings.spool_dir
            else None
        )
        self._replay_due = True

    def run(self) -> None:
        self._prepare()
        if self._spool is not None:
            self._counters.recovered = self._spool.adopt_orphans()
            if self._counters.recovered:
                log.warning("spool_recovered", events=self._counters.recovered)
        reader = FrameReader()
        eof = False
        while not eof or self._batch:
            got = False
            if not eof:
                got, eof = self._read(reader)
            if self._spool is not None:
                self._spool.sync()
            if self._batch and (eof or self._due()):
                self._export()
            elif self._replay_due and not eof and self._spool is not None:
                self._replay_one()
            if self._flush_requested is not None and not self._batch:
                self._report(flushed=self._flush_requested)
                self._flush_requested = None
            elif self._counters.received != self._reported_received and (
                self._clock() - self._reported_at >= _REPORT_EVERY_S
            ):
                self._report()
            if got and not eof:
                time.sleep(_COALESCE_S)
        if reader.partial:
            # A torn last frame: the serving process died mid-write.
            self._counters.dropped["torn_frame"] += 1
            log.error("sender_torn_frame", bytes=reader.partial)
        if self._spool is not None:
            self._spool.close()
        self._sender.close()
        cpu = os.times()
        log.info(
            "sender_stopped",
            pid=os.getpid(),
            received=self._counters.received,
            sent=self._counters.sent,
            requests=self._counters.requests,
            dropped=dict(self._counters.dropped),
            spooled=self._counters.spooled,
            replayed=self._counters.replayed,
            burst_max_us=round(self._counters.burst_max_ns / 1000, 1),
            cpu_s=round(cpu.user + cpu.system, 3),
        )
        self._report(final=True)

    # -- the loop's steps ----------------------------------------------------------

    def _prepare(self) -> None:
        error: str | None = None
        try:
            self._sender.prepare()
        except Exception as exc:
            # Sending retries by itself; the serving process logs the reason.
            error = f"{type(exc).__name__}: {exc}"
        self._report(ready=True, prepare_error=error)

    def _due(self) -> bool:
        return (
            len(self._batch) >= self._settings.max_export_batch
            or self._clock() - self._first_at >= self._settings.linger_s
            or self._flush_requested is not None
        )

    def _timeout(self) -> float | None:
        if self._flush_requested is not None:
            return 0.0
        if self._replay_due and self._spool is not None and not self._batch:
            return 0.0  # a spool file to send: look at the pipe, then replay
        if not self._batch:
            # Nothing due: sleep until events (or the end) arrive, unless
            # counters are waiting to be reported.
            if self._counters.received != self._reported_received:
                return _REPORT_EVERY_S
            return None
        wait = max(0.0, self._first_at + self._settings.linger_s - self._clock())
        if self._spool is not None and self._spool.unsynced:
            # The fsync point must not wait for the linger.
            wait = min(wait, self._spool.sync_every_s)
        return wait

    def _read(self, reader: FrameReader) -> tuple[bool, bool]:
        """Take what the pipe holds (waiting at most until a batch is due);
        returns (read something, end-of-file)."""
        readable, _, _ = select.select([self._events_fd], [], [], self._timeout())
        if not readable:
            return False, False
        data = os.read(self._events_fd, _READ_SIZE)
        if not data:
            return False, True
        started = time.thread_time_ns()
        producer = self._settings.producer_id
        try:
            payloads = list(reader.feed(data))
        except FrameError as exc:
            # Our own writer never does this; a stream out of step cannot be
            # trusted past this point, and end-of-file is the safe answer.
            log.error("sender_stream_corrupt", error=str(exc))
            self._counters.dropped["corrupt_stream"] += 1
            return True, True
        for payload in payloads:
            try:
                message = decode(payload)
            except FrameError as exc:
                self._counters.received += 1
                self._counters.dropped["undecodable"] += 1
                log.error("sender_frame_undecodable", error=str(exc))
                continue
            if isinstance(message, EventRecord):
                if not self._batch:
                    self._first_at = self._clock()
                self._counters.received += 1
                try:
                    event = message.to_proto(producer)
                except Exception:
                    log.exception("emitter_export_failed", events=1)
                    self._counters.dropped["export_error"] += 1
                    continue
                self._batch.append(event)
                if self._spool is not None:
                    self._spool.log(event)
            else:
                self._control(message)
        self._note_burst(started)
        return True, False

    def _control(self, message: dict[str, Any]) -> None:
        if "drain_s" in message:
            self._drain_deadline = self._clock() + float(message["drain_s"])
        if "flush" in message:
            self._flush_requested = int(message["flush"])

    def _export(self) -> None:
        batch, self._batch = self._batch, []
        deadline = self._clock() + self._settings.retry_deadline_s
        if self._drain_deadline is not None:
            deadline = min(deadline, self._drain_deadline)
        started = time.thread_time_ns()
        result = self._sender.export_events(batch, deadline)
        if self._spool is not None:
            self._park(result)
            self._spool.batch_done()  # every event of it is sent, dropped or parked
        self._note_burst(started)
        self._counters.add(result)
        if result.sent and not result.dropped["send_failed"]:
            self._replay_due = True  # the backend answers: time to empty the spool
        self._report()

    def _park(self, result: ExportResult) -> None:
        """Move what could not be sent from send_failed to the spool."""
        assert self._spool is not None
        if not result.unsent:
            return
        parked, refused = self._spool.park(result.unsent)
        result.dropped["send_failed"] -= parked + refused
        if refused:
            result.dropped["spool_full"] += refused
            log.error("spool_full", refused=refused, max_bytes=self._settings.spool_max_bytes)
        result.dropped += Counter()  # drop zero counts
        self._counters.spooled += parked
        if parked:
            log.warning("events_spooled", events=parked)

    def _replay_one(self) -> None:
        """Send the oldest spool file, if any; stop replaying until the next
        successful send when the backend still fails."""
        assert self._spool is not None
        path = self._spool.oldest()
        if path is None:
            self._replay_due = False
            return
        started = time.thread_time_ns()
        back = self._spool.take(path)
        if back.corrupt:
            self._counters.spool_corrupt += 1
        result = (
            self._sender.export_events(back.events, self._clock() + self._settings.retry_deadline_s)
            if back.events
            else ExportResult()
        )
        self._counters.replayed += result.sent
        self._counters.requests += result.requests
        self._counters.retries += result.retries
        self._counters.latencies.add(result.latencies)
        failed = result.dropped["send_failed"]
        self._counters.replay_dropped += sum(result.dropped.values()) - failed
        if failed:
            self._replay_due = False
            if back.corrupt:
                # Its damaged original is set aside: keep the unsent part.
                self._spool.park(result.unsent)
        elif not back.corrupt:
            self._spool.done(path)
        self._note_burst(started)
        log.info("spool_replayed", file=path.name, sent=result.sent, failed=failed)
        self._report()

    def _note_burst(self, started_ns: int) -> None:
        """CPU (not wall) time of one step: what it took from whichever core ran it."""
        burst = time.thread_time_ns() - started_ns
        self._counters.burst_max_ns = max(self._counters.burst_max_ns, burst)

    def _report(self, **extra: Any) -> None:
        if self._reports_fd is None:
            return
        counters = self._counters
        message = {
            "pid": os.getpid(),
            "received": counters.received,
            "sent": counters.sent,
            "requests": counters.requests,
            "retries": counters.retries,
            "dropped": dict(counters.dropped),
            "buffered": len(self._batch),
            "spooled": counters.spooled,
            "recovered": counters.recovered,
            "replayed": counters.replayed,
            "replay_dropped": counters.replay_dropped,
            "spool_corrupt": counters.spool_corrupt,
            "latencies": counters.latencies.as_dict(),
            **extra,
        }
        try:
            os.write(self._reports_fd, control_frame(message))
        except OSError:
            # The serving process is gone; keep sending, stop reporting.
            self._reports_fd = None
        self._reported_at = self._clock()
        self._reported_received = counters.received


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="offpath's analytics sender process")
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--reports-fd", type=int, required=True)
    parser.add_argument("--settings", required=True, help="EmitterSettings as JSON")
    parser.add_argument("--sink", required=True, help="module:factory making the EventSink")
    parser.add_argument("--sink-arg", default=None)
    parser.add_argument("--service", default="emitter")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    # The lowest priority: analytics yield to whatever else runs where the
    # sender does (a serving process, a client, other pods). Measured on the
    # 2-core machine with the sender beside the load generator: at normal
    # priority its sends delayed the generator and Query p99 read 2.2x off.
    with contextlib.suppress(OSError):
        os.nice(_LOWEST_PRIORITY - os.nice(0))
    configure_logging(f"{args.service}-sender", args.log_level)
    settings = EmitterSettings.from_json(args.settings)
    factory = load_sink_factory(args.sink)
    sink = factory(settings) if args.sink_arg is None else factory(settings, args.sink_arg)
    log.info(
        "sender_started", pid=os.getpid(), parent=os.getppid(), sink=args.sink, nice=os.nice(0)
    )
    with contextlib.suppress(KeyboardInterrupt):
        SenderProcess(settings, sink, args.events_fd, args.reports_fd).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
