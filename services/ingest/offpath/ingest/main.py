"""AnalyticsIngest entry point: ``python -m offpath.ingest`` (or ``offpath-ingest``).

Serves the read API on gRPC and runs the SQS consumer on its own thread. On
SIGTERM the server stops first (in-flight reads finish), then the consumer
finishes the poll and batch in hand, for up to the grace period; a message it
received but did not finish becomes visible again after the queue's
visibility timeout, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import structlog

from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.metrics import consumer_samples
from offpath.ingest.servicer import SERVICE_NAME, IngestServicer
from offpath.ingest.settings import IngestSettings
from offpath.ingest.store import EventStore
from offpath.kit import aws
from offpath.kit.metrics import serve_metrics
from offpath.kit.server import run_service, serve
from offpath.v1 import ingest_pb2_grpc

log = structlog.get_logger("offpath.ingest")


async def run(settings: IngestSettings, stop_event: asyncio.Event | None = None) -> None:
    store = EventStore(
        aws.dynamodb_client(),
        settings.table,
        rollup_table=settings.rollup_table or None,
        shards=settings.time_shards,
        retention_days=settings.retention_days,
        bucket_s=settings.rollup_bucket_minutes * 60,
    )
    consumer = Consumer(
        # Long polls hold a connection for wait_s; the read timeout must outlast it.
        aws.sqs_client(aws.client_config(read_timeout=settings.wait_s + 10)),
        store,
        Queues(settings.queues, settings.queue_url, settings.dlq_url),
        wait_seconds=settings.wait_s,
    )
    stop = threading.Event()
    server = settings.server
    _, stop_metrics = serve_metrics(
        server.host, server.metrics_port, lambda: consumer_samples(consumer.stats)
    )
    # A daemon thread: a long poll in flight must not hold the process past
    # its shutdown deadline (its messages simply become visible again).
    thread = threading.Thread(
        target=consumer.run, args=(stop,), name="offpath-ingest-consumer", daemon=True
    )

    def add(grpc_server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(
            IngestServicer(store, summary_max_days=settings.retention_days), grpc_server
        )

    async def started() -> None:
        thread.start()

    async def stopped() -> None:
        stop.set()
        await asyncio.to_thread(thread.join, server.grace_s)
        if thread.is_alive():
            log.warning("consumer_still_polling", detail="exiting; its messages reappear")
        stop_metrics()

    await serve(
        server,
        service_names=[SERVICE_NAME],
        add_servicers=add,
        on_started=started,
        on_stopped=stopped,
        stop_event=stop_event,
    )


def main() -> None:
    run_service("offpath-ingest", "ingest", IngestSettings.from_env, run)


if __name__ == "__main__":
    main()
