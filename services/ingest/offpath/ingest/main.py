"""AnalyticsIngest entry point: ``python -m offpath.ingest`` (or ``offpath-ingest``).

Serves the read API on gRPC and runs the SQS consumer on its own thread. On
SIGTERM the server stops first (in-flight reads finish), then the consumer
finishes the poll and batch in hand, for up to the grace period; a message it
received but did not finish becomes visible again after the queue's
visibility timeout, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import random
import threading

import grpc
import structlog

from offpath.ingest.consumer import Consumer, ConsumerStats
from offpath.ingest.metrics import consumer_samples
from offpath.ingest.servicer import SERVICE_NAME, IngestServicer
from offpath.ingest.settings import IngestSettings
from offpath.ingest.store import EventStore
from offpath.kit import aws
from offpath.kit.metrics import serve_metrics
from offpath.kit.server import run_service, serve
from offpath.v1 import ingest_pb2_grpc

log = structlog.get_logger("offpath.ingest")


def _consume(
    settings: IngestSettings, store: EventStore, stats: ConsumerStats, stop: threading.Event
) -> None:
    """Resolve the queues (retrying while the endpoint is not there yet), then poll."""
    # Long polls hold a connection for wait_s; the read timeout must outlast it.
    sqs = aws.sqs_client(aws.client_config(read_timeout=settings.wait_s + 10))
    attempt = 0
    while not stop.is_set():
        try:
            queue_url = (
                settings.queue_url or sqs.get_queue_url(QueueName=settings.names.queue)["QueueUrl"]
            )
            dlq_url = (
                settings.dlq_url or sqs.get_queue_url(QueueName=settings.names.dlq)["QueueUrl"]
            )
            break
        except Exception as exc:
            attempt += 1
            delay = min(30.0, 0.5 * 2**attempt) * random.random()
            log.error("queue_lookup_failed", error=str(exc), retry_in_s=round(delay, 2))
            stop.wait(delay)
    else:
        return
    Consumer(
        sqs, store, queue_url=queue_url, dlq_url=dlq_url, wait_seconds=settings.wait_s, stats=stats
    ).run(stop)


async def run(settings: IngestSettings, stop_event: asyncio.Event | None = None) -> None:
    store = EventStore(
        aws.dynamodb_client(),
        settings.names.table,
        shards=settings.time_shards,
        retention_days=settings.retention_days,
    )
    stop = threading.Event()
    stats = ConsumerStats()
    _, stop_metrics = serve_metrics(
        settings.host, settings.metrics_port, lambda: consumer_samples(stats)
    )
    # A daemon thread: a long poll in flight must not hold the process past
    # its shutdown deadline (its messages simply become visible again).
    consumer = threading.Thread(
        target=_consume,
        args=(settings, store, stats, stop),
        name="offpath-ingest-consumer",
        daemon=True,
    )

    def add(server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(IngestServicer(store), server)

    async def started() -> None:
        consumer.start()

    async def stopped() -> None:
        stop.set()
        await asyncio.to_thread(consumer.join, settings.grace_s)
        if consumer.is_alive():
            log.warning("consumer_still_polling", detail="exiting; its messages reappear")
        stop_metrics()

    await serve(
        service_names=[SERVICE_NAME],
        add_servicers=add,
        host=settings.host,
        port=settings.port,
        grace_s=settings.grace_s,
        on_started=started,
        on_stopped=stopped,
        stop_event=stop_event,
    )


def main() -> None:
    run_service("offpath-ingest", "ingest", IngestSettings.from_env, run)


if __name__ == "__main__":
    main()
