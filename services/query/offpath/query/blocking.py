"""Blocking analytics: the write-up's original, synchronous design.

Each event is sent to SQS before the reply is released: it is the
analytics interceptor's recorder, and its ``emit`` returns a coroutine the
interceptor awaits before letting the reply go. It exists so the benchmark
can show what offpath saves (``OFFPATH_ANALYTICS=blocking``); never use it
to serve.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import structlog

from offpath.emitter import EventRecord, EventSink
from offpath.emitter.redact import REDACT, QueryTextPolicy
from offpath.emitter.sink import ExportResult

log = structlog.get_logger("offpath.query")


class BlockingRecorder:
    """Awaits one sink export per event, on a pool of threads."""

    def __init__(
        self,
        sink: EventSink,
        producer_id: str,
        timeout_s: float = 5.0,
        query_text: QueryTextPolicy = REDACT,
    ) -> None:
        self._sink = sink
        self._producer_id = producer_id
        self._query_text = query_text
        self._timeout_s = timeout_s
        # As many calls in flight as requests (the original awaited a fetch
        # per request): a small shared pool would measure the pool instead.
        # The sink's client is boto3's, which is safe to share across threads.
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="blocking-send")

    async def prepare(self, timeout: float) -> None:
        """Warm the sink up before serving, best effort."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._sink.prepare), timeout
            )
        except Exception as exc:
            log.warning("sqs_warm_up_failed", error=f"{type(exc).__name__}: {exc}")

    async def emit(self, record: EventRecord) -> None:
        """Send ``record`` to SQS and return when SQS has answered (or the
        timeout passed): the reply waits for this. The protobuf, and the
        query text's redaction in it, are made on the pool's thread too."""
        deadline = time.monotonic() + self._timeout_s
        result = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._send, record, deadline
        )
        if result.sent != 1:
            log.warning(
                "blocking_send_failed", event_id=record.event_id, dropped=dict(result.dropped)
            )

    def _send(self, record: EventRecord, deadline: float) -> ExportResult:
        event = record.to_proto(self._producer_id, self._query_text)
        return self._sink.export([event], deadline)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._sink.close()
