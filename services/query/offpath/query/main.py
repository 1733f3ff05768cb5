"""QueryService entry point: ``python -m offpath.query`` (or ``offpath-query``)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import structlog

from offpath.emitter import AnalyticsInterceptor, SqsSink
from offpath.emitter.base import EventEmitter, open_emitter
from offpath.emitter.metrics import emitter_samples
from offpath.kit import aws
from offpath.kit.metrics import serve_metrics
from offpath.kit.server import StartupError, run_service, serve
from offpath.query.blocking import BlockingRecorder
from offpath.query.engine import CatalogError, SkillIndex
from offpath.query.generator import TemplateGenerator
from offpath.query.servicer import SERVICE_NAME, QueryServicer
from offpath.query.settings import QuerySettings
from offpath.v1 import query_pb2_grpc

log = structlog.get_logger("offpath.query")

_WARM_UP_TIMEOUT_S = 3.0


async def run(settings: QuerySettings, stop_event: asyncio.Event | None = None) -> None:
    """Serve until signalled; then stop the server, then drain the emitter."""
    try:
        index = (
            SkillIndex.from_file(settings.catalog_path)
            if settings.catalog_path
            else SkillIndex.default()
        )
    except (OSError, CatalogError) as exc:
        raise StartupError(f"cannot load the skills catalog: {exc}") from exc
    emitter: EventEmitter | None = None
    blocking: BlockingRecorder | None = None
    if settings.analytics != "off":
        # Checked now, not on first send: a missing region or a bad AWS
        # configuration stops start-up with a clear message instead of
        # turning every event into a logged drop.
        aws.check_config()
        if settings.analytics == "background":
            emitter = open_emitter(
                settings.emitter, service="query", log_level=settings.server.log_level
            )
            # Before the gRPC server exists: the sender process (when the
            # settings ask for one) starts from a process with no gRPC threads.
            emitter.start()
        else:
            sqs = aws.sqs_client()
            sink = SqsSink(settings.emitter, client_factory=lambda: sqs)
            blocking = BlockingRecorder(sink, settings.emitter.producer_id)
    # Analytics live in the interceptor, never in the servicer: background
    # hands each call's event to the emitter (O(1)), blocking awaits SQS
    # before the reply, off installs nothing (no analytics work at all).
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if emitter is not None:
        interceptors.append(AnalyticsInterceptor(emitter))
    elif blocking is not None:
        interceptors.append(AnalyticsInterceptor(blocking))
    servicer = QueryServicer(index, TemplateGenerator())
    server = settings.server
    _, stop_metrics = serve_metrics(
        server.host,
        server.metrics_port,
        lambda: emitter_samples(emitter) if emitter is not None else [],
    )

    def add(grpc_server: grpc.aio.Server) -> None:
        query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, grpc_server)

    async def started() -> None:
        # Before health says SERVING: warm the SQS client so its one-time cost
        # does not land on the first flush. Best effort, bounded: analytics
        # must never hold up serving.
        if emitter is not None:
            await emitter.prepare(_WARM_UP_TIMEOUT_S)
        if blocking is not None:
            await blocking.prepare(_WARM_UP_TIMEOUT_S)
        log.info("query_ready", skills=len(index), analytics=settings.analytics)

    async def stopped() -> None:
        if emitter is not None:
            await emitter.shutdown(settings.emitter.drain_timeout_s)
        if blocking is not None:
            blocking.close()
        stop_metrics()

    try:
        await serve(
            server,
            service_names=[SERVICE_NAME],
            add_servicers=add,
            interceptors=interceptors,
            on_started=started,
            on_stopped=stopped,
            stop_event=stop_event,
        )
    finally:
        # Also when serving never began (a port in use): the sender process
        # is ours to stop. Both are idempotent.
        if emitter is not None:
            await emitter.shutdown(settings.emitter.drain_timeout_s)
        stop_metrics()


def main() -> None:
    run_service("offpath-query", "query", QuerySettings.from_env, run)


if __name__ == "__main__":
    main()
