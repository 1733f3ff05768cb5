"""QueryService entry point: ``python -m offpath.query`` (or ``offpath-query``).

With ``OFFPATH_QUERY_WORKERS`` > 1 this process is the supervisor of that
many workers (:mod:`offpath.query.supervisor`); a worker is this same entry
point with ``--worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from offpath.emitter import AnalyticsInterceptor, SqsSink
from offpath.emitter.base import EventEmitter, open_emitter
from offpath.emitter.metrics import emitter_samples
from offpath.kit import aws
from offpath.kit.metrics import LOOPBACK, serve_metrics
from offpath.kit.rpcmetrics import RpcMetrics
from offpath.kit.server import StartupError, run_service, serve
from offpath.kit.settings import environ
from offpath.kit.workers import WorkerLink, die_with_parent
from offpath.query.blocking import BlockingRecorder
from offpath.query.engine import CatalogError, SkillIndex
from offpath.query.generator import TemplateGenerator
from offpath.query.servicer import SERVICE_NAME, QueryServicer
from offpath.query.settings import QuerySettings
from offpath.query.supervisor import Supervisor
from offpath.v1 import query_pb2_grpc

log = structlog.get_logger("offpath.query")

PROGRAM = "offpath-query"

_WARM_UP_TIMEOUT_S = 3.0


async def run(
    settings: QuerySettings,
    stop_event: asyncio.Event | None = None,
    *,
    worker: WorkerLink | None = None,
) -> None:
    """Serve until signalled; then stop the server, then drain the emitter.

    As ``worker`` of a supervisor: the gRPC port is shared (SO_REUSEPORT),
    /metrics is on loopback (only the supervisor reads it), and the
    supervisor hears when this worker serves."""
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
            blocking = BlockingRecorder(
                sink,
                settings.emitter.producer_id,
                query_text=settings.emitter.query_text_policy(),
            )
    # Analytics live in the interceptor, never in the servicer: background
    # hands each call's event to the emitter (O(1)), blocking awaits SQS
    # before the reply, off installs nothing (no analytics work at all).
    # RPC counts and latency first, so the time they measure includes the
    # analytics interceptor's.
    rpc_metrics = RpcMetrics()
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [rpc_metrics.interceptor]
    trailer = settings.emitter.event_id_trailer
    if emitter is not None:
        interceptors.append(AnalyticsInterceptor(emitter, event_id_trailer=trailer))
    elif blocking is not None:
        interceptors.append(AnalyticsInterceptor(blocking, event_id_trailer=trailer))
    servicer = QueryServicer(index, TemplateGenerator())
    server = settings.server
    # A worker's /metrics is its supervisor's to read (on loopback), and its
    # line is not the service's metrics_started: that one is the supervisor's.
    metrics_port, stop_metrics = serve_metrics(
        LOOPBACK if worker is not None else server.host,
        server.metrics_port,
        lambda: emitter_samples(emitter) if emitter is not None else [],
        event="metrics_started" if worker is None else "worker_metrics_started",
        extra=[rpc_metrics],
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
            activity=rpc_metrics.activity,
            on_started=started,
            on_stopped=stopped,
            stop_event=stop_event,
            reuse_port=worker is not None,
            worker=worker.index if worker is not None else None,
            on_serving=(
                (lambda port: worker.serving(port, metrics_port)) if worker is not None else None
            ),
        )
    finally:
        # Also when serving never began (a port in use): the sender process
        # is ours to stop. Both are idempotent.
        if emitter is not None:
            await emitter.shutdown(settings.emitter.drain_timeout_s)
        stop_metrics()


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="QueryService. Configured by OFFPATH_* variables (see the README).",
    )
    # A supervisor's workers only: not for people.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--status-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None and (args.status_fd is None or args.parent_pid is None):
        parser.error("--worker needs --status-fd and --parent-pid")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    if args.worker is not None:
        _worker_main(args.worker, args.status_fd, args.parent_pid)
        return
    code = 0

    async def serve_or_supervise(settings: QuerySettings) -> None:
        nonlocal code
        if settings.workers > 1:
            code = await Supervisor(settings, environ()).run()
        else:
            await run(settings)

    run_service(PROGRAM, "query", QuerySettings.from_env, serve_or_supervise)
    if code:
        sys.exit(code)


def _worker_main(index: int, status_fd: int, parent_pid: int) -> None:
    """Worker ``index``: QueryService, telling the supervisor how it went."""
    die_with_parent(parent_pid)
    link = WorkerLink(index, status_fd)
    # Every line of this process says which worker wrote it (asyncio.run
    # copies this context into the service's tasks).
    structlog.contextvars.bind_contextvars(worker=index)

    async def serve_as_worker(settings: QuerySettings) -> None:
        await run(settings, worker=link)

    # The supervisor prints the start-up error, once for the service.
    run_service(PROGRAM, "query", QuerySettings.from_env, serve_as_worker, report=link.failed)


if __name__ == "__main__":
    main()
