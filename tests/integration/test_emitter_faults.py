"""The emitter's sender process against the local endpoint through a TCP proxy that
the test cuts for a few seconds (SQS unreachable, then back): its counters move while
the outage lasts, and with the spool on every emitted event is delivered, whether SQS
comes back while it runs or only after a shutdown and a restart."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from offpath.dev.bootstrap import ResourceNames
from offpath.dev.stack import DevStack
from offpath.emitter import EmitterSettings, EventRecord
from offpath.emitter.process import ProcessEmitter
from offpath.kit.aws import sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import decode_message
from offpath.testing.waits import eventually

START_S = 20.0  # a fresh interpreter importing boto3: generous on a busy machine


class CuttableProxy:
    """A TCP proxy on 127.0.0.1:<free port> to ``upstream``. ``cut()`` makes the
    endpoint unreachable: open connections are closed and new ones closed as soon as
    they are accepted, until ``restore()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(local_aws: DevStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[CuttableProxy]:
    """The proxy in front of the local endpoint; SQS clients made while the test runs
    (the sender processes' among them) go through it."""
    endpoint = urlsplit(local_aws.endpoint)
    assert endpoint.hostname is not None
    assert endpoint.port is not None
    cuttable = CuttableProxy((endpoint.hostname, endpoint.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{cuttable.port}")
    try:
        yield cuttable
    finally:
        cuttable.close()


def _record(i: int) -> EventRecord:
    return EventRecord(
        event_id=new_id(),
        occurred_at_ns=time.time_ns(),
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=f"question {i}",
        processing_ns=250_000,
    )


def _delivered(queue: str) -> list[str]:
    """Event ids of every message in the queue (read once the proxy is restored)."""
    sqs = sqs_client()
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    ids: list[str] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            return ids
        for message in got:
            batch = decode_message(message["Body"], message.get("MessageAttributes", {}))
            ids.extend(event.event_id for event in batch.events)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)
            ],
        )


def _settings(names: ResourceNames, spool: str, **overrides: Any) -> EmitterSettings:
    base: dict[str, Any] = {
        "queue_name": names.queues.queue,
        "producer_id": "faults",
        "linger_s": 0.05,
        "retry_deadline_s": 30.0,
        "spool_dir": spool,
    }
    base.update(overrides)
    return EmitterSettings(**base)


async def _emit(emitter: ProcessEmitter, records: list[EventRecord], rate: float) -> None:
    """Emit ``records`` at ``rate`` per second (under 100/s, as the issue's runs)."""
    start = time.monotonic()
    for i, record in enumerate(records):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        assert emitter.emit(record)


async def test_counters_move_during_an_outage_and_every_event_arrives_after_it(
    proxy: CuttableProxy, names: ResourceNames, tmp_path: Path
) -> None:
    """SQS unreachable for a few seconds while events are emitted at 50/s: the failed
    calls, the retries and the events waiting show in the stats while the outage
    lasts; after it, every emitted event is in the queue (delivered = emitted)."""
    emitter = ProcessEmitter(_settings(names, str(tmp_path / "spool")))
    emitter.start()
    try:
        assert await emitter.prepare(START_S)
        before = [_record(i) for i in range(20)]
        await _emit(emitter, before, 50)
        await eventually(lambda: emitter.stats.sent == 20, START_S)
        proxy.cut()
        during = [_record(i) for i in range(20, 120)]
        await _emit(emitter, during, 50)
        await eventually(
            lambda: (
                emitter.stats.outcomes["unreachable"] >= 2
                and emitter.stats.retries >= 2
                and emitter.stats.retrying > 0
            ),
            START_S,
        )
        in_outage = emitter.stats
        assert in_outage.sent == 20
        proxy.restore()
        await eventually(lambda: emitter.stats.sent == 120, START_S + 30)
        assert emitter.stats.retrying == 0
    finally:
        stats = await emitter.shutdown(10)
    assert stats.dropped == {}
    assert stats.spooled == 0
    assert stats.outcomes["ok"] >= 2
    assert sorted(set(_delivered(names.queues.queue))) == sorted(
        r.event_id for r in before + during
    )


async def test_shutdown_during_an_outage_spools_and_the_next_start_delivers(
    proxy: CuttableProxy, names: ResourceNames, tmp_path: Path
) -> None:
    """A shutdown while SQS is unreachable ends within its drain timeout with every
    unconfirmed event in the spool and none dropped; the next start, with SQS back,
    sends them all: delivered = emitted."""
    spool = tmp_path / "spool"
    down = ProcessEmitter(_settings(names, str(spool)))
    down.start()
    assert await down.prepare(START_S)
    proxy.cut()
    records = [_record(i) for i in range(60)]
    await _emit(down, records, 50)
    await eventually(lambda: down.stats.retrying > 0, START_S)
    started = time.monotonic()
    stats = await down.shutdown(2.0)
    assert time.monotonic() - started < 3.5
    assert stats.dropped == {}
    assert stats.sent + stats.spooled == 60
    proxy.restore()
    up = ProcessEmitter(_settings(names, str(spool)))
    up.start()
    try:
        assert await up.prepare(START_S)
        await eventually(lambda: up.stats.replayed == stats.spooled, START_S)
    finally:
        await up.shutdown(10)
    assert sorted(set(_delivered(names.queues.queue))) == sorted(r.event_id for r in records)
    assert not list(spool.glob("*.events"))
