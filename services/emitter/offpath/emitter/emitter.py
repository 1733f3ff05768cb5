"""The emitter: bounded buffer and flusher task, on the event loop.

Reads like OpenTelemetry's BatchProcessor. Everything in this module runs on
the event loop's thread. ``emit`` appends to a deque (no lock: the loop is
single-threaded) and, when a full export batch is waiting, wakes the
flusher. The flusher otherwise wakes every ``linger_s`` and hands what is
buffered, as plain records, to the sender thread (``offpath.emitter.sender``),
where records become protobuf and the sink sends them. Exceptions stop at the
flusher's boundary and are logged; they never reach an RPC.

Every emitted event ends up counted exactly once: sent, or dropped under a
reason (``queue_full``, ``shutdown``, ``too_large``, ``rejected``,
``send_failed``, ``export_error``, ``shutdown_unsent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from offpath.emitter.record import EventRecord
from offpath.emitter.sender import Sender, SenderThread
from offpath.emitter.settings import EmitterSettings
from offpath.emitter.sink import CallLatencies, EventSink, SendProgress, live_progress

log = structlog.get_logger("offpath.emitter")

# Drops that happen at emit(), before an event is enqueued.
DOOR_REASONS = ("queue_full", "shutdown", "unencodable")


@dataclass(slots=True)
class EmitterStats:
    """Counters since start. ``enqueued`` plus the drops at the door
    (``queue_full``, ``shutdown``, ``unencodable``) is everything emitted;
    every enqueued event ends up ``sent``, dropped under another reason, or
    ``spooled`` (kept on disk for a later send), and until then is pending.
    ``replayed`` counts events sent from the spool: enqueued by an earlier
    sender or process, so outside this identity; ``recovered`` the events a
    sender found in the write-ahead logs of senders that died (sent again
    from the spool).

    ``requests`` and ``retries`` move as each SQS call ends, during an
    outage too; ``outcomes`` splits the requests by what they came to;
    ``retrying`` (a gauge) is how many events wait for SQS in a retry loop
    now; ``spool_files`` and ``spool_bytes`` (gauges) what the spool holds."""

    enqueued: int = 0
    sent: int = 0
    requests: int = 0
    retries: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    spooled: int = 0
    replayed: int = 0
    # How long the SQS calls took.
    latencies: CallLatencies = field(default_factory=CallLatencies)
    outcomes: Counter[str] = field(default_factory=Counter)
    retrying: int = 0
    recovered: int = 0
    spool_files: int = 0
    spool_bytes: int = 0

    @property
    def emitted(self) -> int:
        return self.enqueued + sum(self.dropped[reason] for reason in DOOR_REASONS)

    def snapshot(self) -> EmitterStats:
        # dict.copy is one C call under the GIL: safe while the loop thread
        # adds a reason (a metrics scrape reads from another thread).
        return dataclasses.replace(
            self,
            dropped=Counter(dict.copy(self.dropped)),
            latencies=self.latencies.copy(),
            outcomes=Counter(dict.copy(self.outcomes)),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "enqueued": self.enqueued,
            "sent": self.sent,
            "requests": self.requests,
            "retries": self.retries,
            "dropped": dict(self.dropped),
            "spooled": self.spooled,
            "replayed": self.replayed,
            "recovered": self.recovered,
        }


class EmitterLifecycle:
    """What both emitters share around serving: a shutdown that runs once
    (a second caller waits for the first) and drop reports in the log.
    Subclasses give ``stats``, ``_settings`` and ``_shutdown``."""

    _settings: EmitterSettings
    _shutdown_done: asyncio.Future[None] | None = None
    _reported_drops: Counter[str]

    @property
    def stats(self) -> EmitterStats:
        raise NotImplementedError

    async def _shutdown(self, timeout: float) -> None:
        raise NotImplementedError

    async def shutdown(self, timeout: float | None = None) -> EmitterStats:
        """Stop accepting events and drain within ``timeout`` (default: the
        configured drain timeout); what is left is counted. Safe to call
        twice: the second call waits for the first."""
        if self._shutdown_done is not None:
            await asyncio.shield(self._shutdown_done)
            return self.stats
        self._shutdown_done = asyncio.get_running_loop().create_future()
        try:
            await self._shutdown(self._settings.drain_timeout_s if timeout is None else timeout)
        finally:
            self._shutdown_done.set_result(None)
        return self.stats

    def _report_lost(self) -> None:
        """At shutdown: one ``events_lost`` line with every event this run gave
        up on, by reason (the metrics endpoint may be gone before a scrape
        sees the last of them; the log line stays). Silent when none was."""
        stats = self.stats
        lost = {reason: n for reason, n in sorted(stats.dropped.items()) if n}
        if lost:
            log.error(
                "events_lost",
                total=sum(lost.values()),
                by_reason=lost,
                emitted=stats.emitted,
                sent=stats.sent,
                spooled=stats.spooled,
            )

    def _report_drops(self) -> None:
        """Log drops since the last report, off the request path."""
        dropped = self.stats.dropped
        new = dropped - self._reported_drops
        if new:
            log.warning("events_dropped", **dict(new), total=dict(dropped))
            self._reported_drops = Counter(dropped)


class Emitter(EmitterLifecycle):
    """Fire-and-forget delivery of :class:`EventRecord` to an :class:`EventSink`."""

    def __init__(
        self,
        sink: EventSink,
        settings: EmitterSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._clock = clock
        self._buffer: deque[EventRecord] = deque()
        self._stats = EmitterStats()
        # The SQS calls: counted live by the sink when it can (during an
        # outage too), else from each export's result when it returns.
        live = live_progress(sink)
        self._calls = live if live is not None else SendProgress()
        self._calls_from_results = live is None
        self._in_flight = 0
        self._stopping = False
        self._stop_deadline = float("inf")
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._sender: SenderThread | None = None
        self._shutdown_done = None
        self._reported_drops = Counter()

    # -- the request path -------------------------------------------------

    def emit(self, record: EventRecord) -> bool:
        """Buffer ``record`` for sending. O(1); never blocks, never raises.

        Returns False when the record was dropped (buffer full, or shutting
        down); the drop is counted either way.
        """
        if self._stopping:
            self._stats.dropped["shutdown"] += 1
            return False
        buffer = self._buffer
        if len(buffer) >= self._settings.max_queue_size:
            # Newest is dropped: what is buffered is older and closer to being sent.
            self._stats.dropped["queue_full"] += 1
            return False
        buffer.append(record)
        self._stats.enqueued += 1
        wake = self._wake
        if (
            wake is not None
            and len(buffer) >= self._settings.max_export_batch
            and not wake.is_set()
        ):
            wake.set()
        return True

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start the flusher on the running loop. Call once."""
        if self._task is not None:
            raise RuntimeError("emitter already started")
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._sender = SenderThread(
            Sender(self._sink, self._settings.producer_id, self._settings.query_text_policy())
        )
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="offpath-emitter-flusher"
        )
        log.info("emitter_started", **{**self._settings.describe(), "sender": "thread"})

    async def prepare(self, timeout: float) -> bool:
        """Warm the sink up (client, queue look-up) on the sender thread, for
        at most ``timeout`` seconds: the first flush then does not pay
        botocore's one-time set-up while requests are being served. Best
        effort: returns False, and logs why, when it failed or took too long."""
        if self._sender is None:
            raise RuntimeError("emitter not started")
        try:
            await asyncio.wait_for(asyncio.shield(self._sender.prepare()), timeout)
        except Exception as exc:
            log.warning("emitter_warm_up_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    @property
    def stats(self) -> EmitterStats:
        """A snapshot of the counters."""
        stats = self._stats.snapshot()
        calls = self._calls.copy()
        stats.outcomes = calls.outcomes
        stats.requests = calls.requests
        stats.retries = calls.retries
        stats.retrying = calls.retrying
        stats.latencies = calls.latencies
        return stats

    @property
    def pending(self) -> int:
        """Events buffered or being exported right now."""
        return len(self._buffer) + self._in_flight

    async def force_flush(self) -> None:
        """Export everything buffered now, and wait for it."""
        await self._export_pending()

    async def _shutdown(self, timeout: float) -> None:
        self._stopping = True
        self._stop_deadline = self._clock() + timeout
        if self._task is None:
            # Never started: nothing can send what was buffered.
            self._stats.dropped["shutdown_unsent"] += len(self._buffer)
            self._buffer.clear()
        else:
            assert self._wake is not None
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=max(timeout, 0.0))
            if not done:
                self._task.cancel()
                # The sender may still finish the call in flight; it is
                # counted as unsent because nothing confirmed it in time.
                unsent = len(self._buffer) + self._in_flight
                self._stats.dropped["shutdown_unsent"] += unsent
                self._buffer.clear()
                self._in_flight = 0
                log.warning("emitter_drain_timeout", unsent=unsent, timeout_s=timeout)
        if self._sender is not None:
            self._sender.close()  # the sink is closed on the sender thread
        else:
            # Never started: no thread ever used the sink.
            Sender(self._sink, self._settings.producer_id).close()
        self._report_drops()
        self._report_lost()
        log.info(
            "emitter_stopped",
            sender="thread",
            sender_burst_max_us=(
                round(self._sender.burst_max_ns / 1000, 1) if self._sender is not None else None
            ),
            **self.stats.as_dict(),
        )

    # -- the flusher --------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._stopping and len(self._buffer) < self._settings.max_export_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._settings.linger_s)
                self._wake.clear()
            try:
                await self._export_pending()
            except Exception:
                log.exception("emitter_flush_failed")
            self._report_drops()
            if self._stopping and not self._buffer:
                return

    async def _export_pending(self) -> None:
        assert self._lock is not None
        assert self._sender is not None
        async with self._lock:
            # Only what is buffered now: events arriving during the export
            # wait for the next linger (or a full batch) instead of being
            # chased one small request at a time.
            remaining = len(self._buffer)
            while remaining > 0 and self._buffer:
                size = min(remaining, len(self._buffer), self._settings.max_export_batch)
                remaining -= size
                chunk = [self._buffer.popleft() for _ in range(size)]
                deadline = min(self._clock() + self._settings.retry_deadline_s, self._stop_deadline)
                self._in_flight = size
                try:
                    result = await self._sender.export(chunk, deadline)
                finally:
                    self._in_flight = 0
                self._stats.sent += result.sent
                if self._calls_from_results:
                    self._calls.add(result)
                self._stats.dropped.update(result.dropped)
