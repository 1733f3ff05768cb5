"""QueryService entry point: ``python -m offpath.query`` (or ``offpath-query``)."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from offpath.emitter import Emitter, SqsSink
from offpath.kit.server import run_service, serve
from offpath.query.engine import CatalogError, SkillIndex
from offpath.query.generator import TemplateGenerator
from offpath.query.servicer import SERVICE_NAME, QueryServicer
from offpath.query.settings import QuerySettings
from offpath.v1 import query_pb2_grpc

log = structlog.get_logger("offpath.query")


async def run(settings: QuerySettings, stop_event: asyncio.Event | None = None) -> None:
    """Serve until signalled; then stop the server, then drain the emitter."""
    index = (
        SkillIndex.from_file(settings.catalog_path)
        if settings.catalog_path
        else SkillIndex.default()
    )
    emitter: Emitter | None = None
    if settings.analytics == "background":
        emitter = Emitter(SqsSink(settings.emitter), settings.emitter)
    servicer = QueryServicer(index, TemplateGenerator(), emitter)

    def add(server: grpc.aio.Server) -> None:
        query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)

    async def started() -> None:
        if emitter is not None:
            emitter.start()
        log.info("query_ready", skills=len(index), analytics=settings.analytics)

    async def stopped() -> None:
        if emitter is not None:
            await emitter.shutdown(settings.emitter.drain_timeout_s)

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
    run_service("offpath-query", "query", QuerySettings.from_env, run, fatal=(CatalogError,))


if __name__ == "__main__":
    main()
