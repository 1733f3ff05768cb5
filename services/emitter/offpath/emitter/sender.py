"""The sender side of the emitter: everything that runs off the event loop.

The emitter's thread boundary is this module's shape:

- :class:`Sender` owns the sink. Every one of its methods runs on the sender
  thread: records become protobuf there (their query text redacted, or as
  the settings say, on the way), the sink packs and sends them
  there, and the sink is closed there, so the sink is only ever used by one
  thread.
- :class:`SenderThread` is the channel. Its public methods are called on the
  event loop and only put plain data (a list of records, a deadline) on a
  queue; each returns a future that resolves on the loop. Its thread takes
  requests in order and calls the :class:`Sender`.

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one
hung network call would hold the process past its shutdown deadline. The
thread is a daemon; the emitter bounds its own waits and accounts for what
was still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from offpath.emitter.record import EventRecord
from offpath.emitter.redact import REDACT, QueryTextPolicy
from offpath.emitter.sink import EventSink, ExportResult
from offpath.v1 import analytics_pb2

log = structlog.get_logger("offpath.emitter")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Request:
    call: Callable[[], Any]
    # Where to report the outcome; None when nobody waits for it.
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None


class Sender:
    """Turns records into protobuf and hands them to the sink. Runs on the
    sender thread (or in the sender process) only: the query text policy
    (redaction by default) costs CPU the event loop must not pay."""

    def __init__(
        self, sink: EventSink, producer_id: str, query_text: QueryTextPolicy = REDACT
    ) -> None:
        self._sink = sink
        self._producer_id = producer_id
        self._query_text = query_text

    @property
    def query_text(self) -> QueryTextPolicy:
        """What becomes of each record's query text (pass it to ``to_proto``)."""
        return self._query_text

    def export(self, records: Sequence[EventRecord], deadline: float) -> ExportResult:
        """Send ``records``; every one is accounted for in the result (sent or
        dropped under a reason), whatever goes wrong."""
        try:
            producer, query_text = self._producer_id, self._query_text
            events = [record.to_proto(producer, query_text) for record in records]
        except Exception:
            log.exception("emitter_export_failed", events=len(records))
            return ExportResult(dropped=Counter({"export_error": len(records)}))
        return self.export_events(events, deadline)

    def export_events(
        self, events: Sequence[analytics_pb2.AnalyticsEvent], deadline: float
    ) -> ExportResult:
        """Send events already in their wire form, with the same accounting."""
        try:
            result = self._sink.export(events, deadline)
        except Exception:
            log.exception("emitter_export_failed", events=len(events))
            return ExportResult(dropped=Counter({"export_error": len(events)}))
        accounted = result.sent + sum(result.dropped.values())
        if accounted != len(events):
            # A sink that loses track would make the counters lie; say so.
            log.error("emitter_sink_miscount", events=len(events), accounted=accounted)
        return result

    def prepare(self) -> None:
        """Pay the sink's one-time set-up now (see :meth:`EventSink.prepare`)."""
        self._sink.prepare()

    def close(self) -> None:
        try:
            self._sink.close()
        except Exception:
            log.exception("emitter_sink_close_failed")


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SenderThread:
    """One daemon thread running a :class:`Sender`'s calls in submission order."""

    def __init__(self, sender: Sender, name: str = "offpath-emitter-sender") -> None:
        self._sender = sender
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # The longest CPU burst of one call on the thread (written there, read
        # for the shutdown log: an int, so no lock is needed).
        self.burst_max_ns = 0
        self._thread.start()

    # -- called on the event loop --------------------------------------------

    def export(self, records: list[EventRecord], deadline: float) -> asyncio.Future[ExportResult]:
        """Queue ``records`` for sending; the future resolves with the result."""
        return self._submit(lambda: self._sender.export(records, deadline))

    def prepare(self) -> asyncio.Future[None]:
        """Queue the sink's warm-up; the future resolves (or fails) with it."""
        return self._submit(self._sender.prepare)

    def close(self) -> None:
        """Close the sink after what is queued, then let the thread end; does
        not wait (a call in flight may be stuck on the network)."""
        self._requests.put(_Request(self._sender.close))
        self._requests.put(None)

    def _submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._requests.put(_Request(call, loop, future))
        return future

    # -- the sender thread ---------------------------------------------------

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            result: Any = None
            error: BaseException | None = None
            started = time.thread_time_ns()
            try:
                result = request.call()
            except BaseException as exc:  # handed to the awaiting side
                error = exc
            self.burst_max_ns = max(self.burst_max_ns, time.thread_time_ns() - started)
            if request.loop is None or request.future is None:
                continue
            # RuntimeError: the loop closed while we worked; nobody is waiting.
            with contextlib.suppress(RuntimeError):
                request.loop.call_soon_threadsafe(_resolve, request.future, result, error)
