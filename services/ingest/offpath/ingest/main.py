"""AnalyticsIngest entry point: ``python -m offpath.ingest`` (or ``offpath-ingest``).

Serves the read API on gRPC and runs the SQS consumer's pollers on threads of
their own. On SIGTERM the server stops first (in-flight reads finish), then
every poller finishes the messages in hand, for up to the grace period; a
poller still in a long poll is not waited for (what that poll brings is
handed back). A message received but not finished becomes visible again
after its visibility timeout, so nothing is lost.

With ``OFFPATH_INGEST_POLLERS=0`` it serves the read API alone and makes no
SQS call: the queue is consumed elsewhere (the Lambda function,
:mod:`offpath.ingest.lambda_handler`).

With read tokens configured (``OFFPATH_INGEST_READ_TOKENS`` or
``OFFPATH_INGEST_READ_TOKENS_FILE``), every read method needs
``authorization: Bearer <token>`` (:mod:`offpath.kit.auth`); health and
reflection stay open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import Any

import grpc
import structlog

from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.metrics import IngestCollector
from offpath.ingest.servicer import SERVICE_NAME, IngestServicer
from offpath.ingest.settings import IngestSettings
from offpath.ingest.store import EventStore
from offpath.kit import aws
from offpath.kit.auth import BearerTokenInterceptor
from offpath.kit.metrics import MetricsEndpoint
from offpath.kit.rpcmetrics import RpcMetrics
from offpath.kit.server import run_service, serve
from offpath.v1 import ingest_pb2_grpc

log = structlog.get_logger("offpath.ingest")

CONSUMER_THREAD = "offpath-ingest-consumer"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the port to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_interceptors(settings: IngestSettings) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The bearer-token check of the read API when tokens are configured;
    logs whether the read API is guarded, and warns when it is open on an
    address other machines reach."""
    host = settings.server.host
    if settings.read_tokens:
        log.info("read_api_auth", auth="bearer", tokens=len(settings.read_tokens))
        return [BearerTokenInterceptor(settings.read_tokens, [SERVICE_NAME])]
    if is_loopback(host):
        log.info("read_api_auth", auth="none", host=host)
    else:
        log.warning(
            "read_api_open",
            host=host,
            detail="anyone who reaches this port reads the stored events: "
            "set OFFPATH_INGEST_READ_TOKENS_FILE (or OFFPATH_INGEST_READ_TOKENS)",
        )
    return []


async def run(settings: IngestSettings, stop_event: asyncio.Event | None = None) -> None:
    # One connection per poller beside the read API's (botocore's pool is 10).
    pool = settings.pollers + 10
    store = EventStore(
        aws.dynamodb_client(aws.client_config(max_pool_connections=pool)),
        settings.table,
        rollup_table=settings.rollup_table or None,
        shards=settings.time_shards,
        retention_days=settings.retention_days,
        bucket_s=settings.rollup_bucket_minutes * 60,
    )
    consumer: Consumer | None = None
    if settings.pollers:
        consumer = Consumer(
            # Long polls hold a connection for wait_s; the read timeout must outlast it.
            aws.sqs_client(
                aws.client_config(read_timeout=settings.wait_s + 10, max_pool_connections=pool)
            ),
            store,
            Queues(settings.queues, settings.queue_url, settings.dlq_url),
            wait_seconds=settings.wait_s,
            pollers=settings.pollers,
        )
    stop = threading.Event()
    server = settings.server
    rpc_metrics = RpcMetrics()
    metrics = MetricsEndpoint(
        server.host,
        server.metrics_port,
        rpc_metrics,
        extra=[] if consumer is None else [IngestCollector(consumer)],
    )
    metrics.start()

    servicer = IngestServicer(store, summary_max_days=settings.retention_days)

    def add(grpc_server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(servicer, grpc_server)

    async def started() -> None:
        if consumer is None:
            log.info("consumer_off", detail="OFFPATH_INGEST_POLLERS=0: read API only")
            return
        # A daemon thread (as are the pollers it starts): a long poll in
        # flight must not hold the process past its shutdown deadline.
        threading.Thread(
            target=consumer.run, args=(stop,), name=CONSUMER_THREAD, daemon=True
        ).start()

    async def stopped() -> None:
        stop.set()
        servicer.close()
        if consumer is not None and not await asyncio.to_thread(consumer.drain, server.grace_s):
            log.warning("consumer_still_processing", detail="exiting; its messages reappear")
        metrics.stop()

    await serve(
        server,
        service_names=[SERVICE_NAME],
        add_servicers=add,
        # Metrics first: refused calls are counted (UNAUTHENTICATED) too.
        interceptors=[rpc_metrics.interceptor, *read_api_interceptors(settings)],
        activity=rpc_metrics.activity,
        on_started=started,
        on_stopped=stopped,
        stop_event=stop_event,
    )


def main() -> None:
    run_service("offpath-ingest", "ingest", IngestSettings.from_env, run)


if __name__ == "__main__":
    main()
